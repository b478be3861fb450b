"""Proposals: several candidate masks per unlabeled case from the base network, cached on disk.

All sources come from the same forward passes that nnU-Net's test-time augmentation (TTA) makes: the
network is run once per mirror flip of the allowed mirroring axes (8 in 3D, 4 in 2D), and

- ``mirror``      each individual flip's argmax is a proposal;
- ``threshold``   the mean softmax over the flips with the background probability scaled by a factor f
                  (f > 1: more background, smaller masks) before the argmax; for region-based datasets the
                  region probabilities are divided by f before nnU-Net's 0.5 threshold;
- ``temperature`` the mean over the flips of softmax(z / T), then the argmax.

These three cost one TTA prediction per case together (8 forward passes in 3D, 4 in 2D). Each of the
following costs one more (un-mirrored) forward pass per proposal:

- ``intensity``   the argmax on the image under a test-time intensity change x·a + b (in nnU-Net's
                  normalised intensity units), from the fixed ladder ``INTENSITY_LADDER``;
- ``dropout``     Monte-Carlo dropout: dropout layers active at inference, one seeded sample per proposal
                  (opt-in, only for networks trained with dropout: nnU-Net's default plans have none, and
                  such a network is an error here);
- ``model``       another model of the same plans: a fold model or checkpoint (``proposal_models``,
                  e.g. ``1/checkpoint_final.pth``, ``0/checkpoint_best.pth``), one proposal per model;
- ``perturb``     the base network with seeded multiplicative Gaussian noise on its weights,
                  w·(1 + σ·ε), ε ~ N(0, 1) per weight, σ = ``perturb_sigma``; the weights are restored
                  exactly afterwards;
- ``affine``      the image under a small test-time rotation and scaling (fixed ladder ``AFFINE_LADDER``)
                  and the logits warped back onto the case grid before the argmax (nnU-Net's TTA has
                  mirroring only).

:func:`forward_passes` counts a proposal set's cost.

Masks are stored in nnU-Net's preprocessed space, so that patches of image, proposals and hidden labels
line up.

Cache: ``<cache>/proposals/<key>/<case>.npz`` with ``masks`` (uint8, ``(K, *spatial)``) and
``probabilities`` (float16, ``(C, *spatial)``, the mean over flips), and ``<case>.source``, the digest of the
raw files the case was preprocessed from (a replaced image gets new proposals). ``<key>`` hashes everything that
produced them (hash of the base network's weights, plans, configuration, sources, K, seed), so a changed base model or
config reads from a new folder and never from a stale one. Caches of different folds, base models and settings
coexist: nothing here deletes one (``nnUNetv2_rndpo_clean`` removes those no model refers to, when asked). Each
case file is written atomically; a ``manifest.json`` written last marks the folder complete.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnunetv2_rndpo.atomic_files import atomic_write, atomic_write_text
from nnunetv2_rndpo.cascade import pool_input
from nnunetv2_rndpo.checkpoint import weights_sha256

THRESHOLD_LADDER = (2.0, 0.5, 1.5, 0.67, 3.0, 0.33, 4.0, 0.25, 6.0, 0.17)
TEMPERATURE_LADDER = (0.5, 2.0, 0.25, 4.0, 0.75, 1.5)
# (scale a, shift b) of x·a + b in normalised intensity units (≈ standard deviations after z-scoring)
INTENSITY_LADDER = ((1.1, 0.0), (0.9, 0.0), (1.0, 0.1), (1.0, -0.1), (1.25, 0.0), (0.8, 0.0), (1.0, 0.25),
                    (1.0, -0.25))
MAX_DROPOUT_SAMPLES = 16
# (rotation in degrees, scale) of the test-time affine warp; scale > 1 zooms in (structures appear larger)
AFFINE_LADDER = ((5.0, 1.0), (-5.0, 1.0), (0.0, 1.1), (0.0, 0.9), (10.0, 1.0), (-10.0, 1.0), (5.0, 1.1),
                 (-5.0, 0.9))
MAX_PERTURB_SAMPLES = 16
DEFAULT_PERTURB_SIGMA = 0.2  # docs/results/headroom_hc18_cpu.md: 0.2 gave more headroom than 0.1
PROPOSAL_SOURCES = ("mirror", "threshold", "temperature", "intensity", "dropout", "model", "perturb", "affine")
TTA_SOURCES = ("mirror", "threshold", "temperature")


@dataclass(frozen=True)
class ProposalSpec:
    """One proposal recipe: ``source`` plus its parameter (flip axes, threshold factor or temperature)."""

    source: str
    parameter: tuple[int, ...] | float | int | str


def plan_proposals(
    num_proposals: int,
    sources: list[str],
    mirror_axes: tuple[int, ...],
    seed: int,
    models: list[str] | tuple[str, ...] = (),
    perturb_sigma: float = DEFAULT_PERTURB_SIGMA,
) -> list[ProposalSpec]:
    """Chooses ``num_proposals`` recipes from the sources, spread over them round-robin.

    Assumption: the K proposals are divided evenly between the sources (the mirror flips are capped at
    the number of flips, and what they cannot fill goes to the other sources); which flips are used when
    fewer than all are needed is drawn with ``seed``. The factors and temperatures are fixed ladders
    (``THRESHOLD_LADDER``, ``TEMPERATURE_LADDER``), nearest to 1 first. Every recipe carries all its
    parameters (a ``perturb`` recipe is ``(sample index, σ)``, an ``affine`` one ``(degrees, scale)``), so the
    cache key (:func:`proposal_spec`) changes with every knob.

    Raises:
        ValueError: the sources cannot produce ``num_proposals`` distinct recipes.
    """
    flips = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    unknown = [s for s in sources if s not in PROPOSAL_SOURCES]
    if unknown:
        raise ValueError(f"unknown proposal source(s) {unknown}; valid: {', '.join(PROPOSAL_SOURCES)}")
    available = {source: _recipes(source, flips, models, perturb_sigma) for source in sources}
    capacity = sum(len(available[s]) for s in sources)
    if num_proposals > capacity:
        raise ValueError(
            f"num_proposals={num_proposals} but proposal_sources {sources} give at most {capacity} distinct "
            f"proposals here ({len(flips)} mirror flips, {len(models)} extra models); lower num_proposals or add "
            "sources."
        )
    counts = dict.fromkeys(sources, 0)
    remaining = num_proposals
    while remaining:
        for source in sources:
            if remaining and counts[source] < len(available[source]):
                counts[source] += 1
                remaining -= 1
    rng = np.random.default_rng(seed)
    specs = []
    for source in sources:
        options = available[source]
        if source == "mirror" and counts[source] < len(options):
            chosen = sorted(rng.choice(len(options), counts[source], replace=False))
            specs += [options[i] for i in chosen]
        else:
            specs += options[: counts[source]]
    return specs


def _recipes(source: str, flips: list[tuple[int, ...]], models: list[str] | tuple[str, ...],
             perturb_sigma: float) -> list[ProposalSpec]:
    """Every recipe one source of :data:`PROPOSAL_SOURCES` can make, in the order :func:`plan_proposals` takes them."""
    if source == "mirror":
        return [ProposalSpec("mirror", f) for f in flips]
    if source == "threshold":
        return [ProposalSpec("threshold", f) for f in THRESHOLD_LADDER]
    if source == "temperature":
        return [ProposalSpec("temperature", t) for t in TEMPERATURE_LADDER]
    if source == "intensity":
        return [ProposalSpec("intensity", a) for a in INTENSITY_LADDER]
    if source == "dropout":
        return [ProposalSpec("dropout", i) for i in range(MAX_DROPOUT_SAMPLES)]
    if source == "model":
        return [ProposalSpec("model", m) for m in models]
    if source == "perturb":
        return [ProposalSpec("perturb", (i, float(perturb_sigma))) for i in range(MAX_PERTURB_SAMPLES)]
    if source == "affine":
        return [ProposalSpec("affine", a) for a in AFFINE_LADDER]
    raise ValueError(f"unknown proposal source {source!r}; valid: {', '.join(PROPOSAL_SOURCES)}")


def forward_passes(specs: list[ProposalSpec], mirror_axes: tuple[int, ...]) -> int:
    """Network forward passes per sliding-window tile that :func:`propose_case` makes for ``specs``.

    The TTA pass (one per mirror flip, 2^len(mirror_axes)) always runs: it gives the ``mirror``,
    ``threshold`` and ``temperature`` proposals and the mean probabilities stored with every case. Every
    other recipe costs one more pass.
    """
    return 2 ** len(mirror_axes) + sum(s.source not in TTA_SOURCES for s in specs)


def _flip_dims(image_ndim: int, patch_ndim: int, axes: tuple[int, ...]) -> list[int]:
    """Dims of a ``(C, *spatial)`` array that the patch axes ``axes`` refer to (2D configs skip axis 1)."""
    offset = image_ndim - patch_ndim
    return [a + offset for a in axes]


def _dropout_modules(network: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


def _single_pass(predictor, image: torch.Tensor, label_manager) -> torch.Tensor:
    logits = predictor.predict_sliding_window_return_logits(image).float().cpu()
    return torch.as_tensor(label_manager.convert_logits_to_segmentation(logits))


def _extra_pass(predictor, image: torch.Tensor, spec: ProposalSpec, label_manager, seed: int,
                extra_weights: dict) -> torch.Tensor:
    """One proposal of the sources that need their own forward pass (intensity, dropout, model, perturb,
    affine)."""
    network = predictor.network
    if spec.source == "perturb":
        index, sigma = spec.parameter
        return _perturbed_pass(predictor, image, label_manager, sigma, seed * 1000 + index)
    if spec.source == "affine":
        degrees, scale = spec.parameter
        patch_ndim = len(predictor.configuration_manager.patch_size)
        return _affine_pass(predictor, image, label_manager, degrees, scale, patch_ndim)
    if spec.source == "intensity":
        scale, shift = spec.parameter
        return _single_pass(predictor, image * scale + shift, label_manager)
    if spec.source == "dropout":
        dropouts = _dropout_modules(network)
        if not dropouts:
            raise ValueError(
                "proposal source 'dropout' needs a network trained with dropout, but this one has no dropout "
                "layers (nnU-Net's default plans set dropout_op to None). Remove 'dropout' from the sources or "
                "train the base model with dropout in its plans.")
        # the predictor calls network.eval() before every prediction, so dropout is switched on in a hook
        hooks = [m.register_forward_pre_hook(lambda module, _: setattr(module, "training", True)) for m in dropouts]
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1000 + spec.parameter)
                return _single_pass(predictor, image, label_manager)
        finally:
            for hook in hooks:
                hook.remove()
            network.eval()
    if spec.source == "model":
        if spec.parameter not in extra_weights:
            raise ValueError(f"proposal source 'model' {spec.parameter!r}: its weights were not loaded")
        return _pass_with_weights(predictor, image, label_manager, extra_weights[spec.parameter])
    raise ValueError(f"proposal source {spec.source!r} makes no forward pass of its own; valid: "
                     f"{', '.join(s for s in PROPOSAL_SOURCES if s not in TTA_SOURCES)}")


def _pass_with_weights(predictor, image: torch.Tensor, label_manager, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The argmax of the network with ``weights`` loaded (all or some of its tensors); the base weights are
    restored exactly afterwards, also on an error."""
    network = predictor.network
    base = {k: v.detach().clone() for k, v in network.state_dict().items()}
    try:
        network.load_state_dict(weights, strict=set(weights) == set(base))
        return _single_pass(predictor, image, label_manager)
    finally:
        network.load_state_dict(base)


def perturbed_weights(network: torch.nn.Module, sigma: float, seed: int) -> dict[str, torch.Tensor]:
    """The network's parameters times (1 + σ·ε), ε ~ N(0, 1) per weight, drawn on the CPU from ``seed``.

    Parameters are drawn in name order on the CPU, so the same seed gives the same noise on any device.
    Buffers (e.g. running statistics) are not perturbed. Returns ``{name: perturbed tensor}``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    perturbed = {}
    for name, parameter in sorted(network.named_parameters()):
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
        perturbed[name] = parameter.detach() * (1 + sigma * noise.to(parameter.device, parameter.dtype))
    return perturbed


def _perturbed_pass(predictor, image: torch.Tensor, label_manager, sigma: float, seed: int) -> torch.Tensor:
    """The argmax of the base network with weights w·(1 + σ·ε) (:func:`perturbed_weights`); weights restored.

    The perturbed weights of each (σ, seed) are drawn once per predictor and kept on it for the next cases
    (drawing noise for every weight costs more than a forward pass of a small case).
    """
    drawn = predictor.__dict__.setdefault("_rndpo_perturbed_weights", {})
    if (sigma, seed) not in drawn:
        drawn[(sigma, seed)] = perturbed_weights(predictor.network, sigma, seed)
    return _pass_with_weights(predictor, image, label_manager, drawn[(sigma, seed)])


def affine_theta(degrees: float, scale: float, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """``(N, N + 1)`` matrix for ``torch.nn.functional.affine_grid`` (N = 2 or 3 spatial dims) of a rotation
    by ``degrees`` in the plane of the last two spatial axes and a zoom by ``scale`` about the centre.

    ``affine_grid`` maps output to input coordinates, normalised to [−1, 1] per axis and ordered last axis
    first. The rotation is built in voxel units (p_in = R·p_out / scale) and converted, so that it stays a
    rotation on a non-square grid. Assumption: the last two axes of nnU-Net's preprocessed (transposed) array
    are the in-plane ones; in 3D the first axis is left unrotated and only zoomed.
    """
    n = len(spatial_shape)
    angle = math.radians(degrees)
    rotation = torch.eye(n, dtype=torch.float64)
    # grid order is (last axis, second-to-last, ...): rotate the first two grid coordinates
    rotation[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    half_size = torch.tensor(list(reversed(spatial_shape)), dtype=torch.float64) / 2
    matrix = torch.diag(1 / half_size) @ rotation @ torch.diag(half_size) / scale
    return torch.cat([matrix, torch.zeros(n, 1, dtype=torch.float64)], 1).float()


def warp(volume: torch.Tensor, theta: torch.Tensor, patch_ndim: int, padding_mode: str) -> torch.Tensor:
    """``volume`` ``(C, *spatial)`` resampled (bilinear/trilinear) on the grid ``theta`` over its last
    ``patch_ndim`` axes; a 2D configuration's leading slice axis is treated as a batch of slices."""
    import torch.nn.functional as F

    batch = volume[None] if volume.ndim == patch_ndim + 1 else volume.transpose(0, 1)  # (B, C, *spatial)
    grid = F.affine_grid(theta.to(volume.device)[None].expand(batch.shape[0], -1, -1), list(batch.shape),
                         align_corners=False)
    warped = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return warped[0] if volume.ndim == patch_ndim + 1 else warped.transpose(0, 1).contiguous()


def _affine_pass(predictor, image: torch.Tensor, label_manager, degrees: float, scale: float,
                 patch_ndim: int) -> torch.Tensor:
    """Argmax of the logits of the warped image, warped back onto the case grid.

    The image is sampled with reflection at the border (the network sees image-like content, not a constant
    frame); the logits are warped back with the inverse transform and border replication (where the
    inverse reaches past the warped field of view, the nearest predicted logits are used).
    """
    spatial = tuple(image.shape[-patch_ndim:])
    theta = affine_theta(degrees, scale, spatial)
    inverse = torch.linalg.inv(torch.cat([theta, torch.tensor([[0.0] * patch_ndim + [1.0]])]))[:-1]
    warped_image = warp(image, theta, patch_ndim, "reflection").to(image.dtype)
    logits = predictor.predict_sliding_window_return_logits(warped_image).float()
    logits = warp(logits, inverse, patch_ndim, "border").cpu()
    return torch.as_tensor(label_manager.convert_logits_to_segmentation(logits))


@torch.inference_mode()
def propose_case(
    predictor,
    image: torch.Tensor,
    specs: list[ProposalSpec],
    label_manager,
    mirror_axes: tuple[int, ...],
    seed: int = 0,
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generates the proposals of one case.

    Args:
        predictor: an ``nnUNetPredictor`` initialised with the base network (``use_mirroring`` is
            switched off here: flips are made explicitly).
        image: ``(C_in, *spatial)`` preprocessed image.
        specs: recipes from :func:`plan_proposals`.
        label_manager: nnU-Net's ``LabelManager`` (softmax or regions).
        mirror_axes: the network's allowed mirroring axes (patch axes).
        seed: seeds the ``dropout`` and ``perturb`` samples.
        extra_weights: ``{name: state_dict}`` of the ``model`` source's models.

    Returns:
        ``(masks, probabilities)``: uint8 ``(K, *spatial)`` label maps and float16 ``(C, *spatial)`` mean
        probabilities over all flips.
    """
    predictor.use_mirroring = False
    patch_ndim = len(predictor.configuration_manager.patch_size)
    temperatures = sorted({1.0} | {s.parameter for s in specs if s.source == "temperature"})
    mean_probabilities = dict.fromkeys(temperatures, 0.0)
    flip_masks = {}
    flips = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    for flip in flips:
        dims = _flip_dims(image.ndim, patch_ndim, flip)
        flipped = torch.flip(image, dims) if dims else image
        # on the host: nnU-Net's LabelManager converts probabilities to labels through numpy
        logits = predictor.predict_sliding_window_return_logits(flipped).float().cpu()
        logits = torch.flip(logits, dims) if dims else logits
        if ProposalSpec("mirror", flip) in specs:
            flip_masks[flip] = torch.as_tensor(label_manager.convert_logits_to_segmentation(logits)).to(torch.uint8)
        for t in temperatures:
            probabilities_t = label_manager.apply_inference_nonlin(logits / t)
            mean_probabilities[t] = mean_probabilities[t] + probabilities_t / len(flips)
    probabilities = mean_probabilities[1.0]
    masks = []
    for spec in specs:
        if spec.source == "mirror":
            masks.append(flip_masks[spec.parameter])
        elif spec.source == "temperature":
            masks.append(label_manager.convert_probabilities_to_segmentation(mean_probabilities[spec.parameter]))
        elif spec.source not in TTA_SOURCES:
            masks.append(_extra_pass(predictor, image, spec, label_manager, seed, extra_weights or {}))
        elif spec.source == "threshold":
            scaled = probabilities.clone()
            if label_manager.has_regions:
                scaled = (scaled / spec.parameter).clamp(0, 1)
            else:
                scaled[0] *= spec.parameter
            masks.append(label_manager.convert_probabilities_to_segmentation(scaled))
        else:
            raise ValueError(f"unknown proposal source {spec.source!r}; valid: {', '.join(PROPOSAL_SOURCES)}")
    stacked = torch.stack([torch.as_tensor(m).to(torch.uint8).cpu() for m in masks]).numpy()
    return stacked, probabilities.half().cpu().numpy()


# what a cache keeps of the masks it read inside ``remembering()``: enough for a pool of small cases, and a bound
# for large 3D ones (the oldest case read goes first)
MASK_MEMORY_BYTES = 512 * 2**20


class RemembersMasks:
    """``masks(case)`` read from disk once inside ``with cache.remembering():``, not once per pass.

    The commands and the phase read every case's masks in several passes (true Dice, the judge, mining, the
    reports); decompressing a case costs more than keeping it. Outside the block (the patch sampler, which
    reads one case per sample in every data-loading worker) nothing is kept.
    """

    _remembered: collections.OrderedDict | None = None

    def masks(self, case_id: str) -> np.ndarray:
        if self._remembered is None:
            return self._read_masks(case_id)
        if case_id not in self._remembered:
            masks = self._read_masks(case_id)
            masks.flags.writeable = False  # shared by every later reader: none may change it
            self._remembered[case_id] = masks
            while len(self._remembered) > 1 and sum(m.nbytes for m in self._remembered.values()) > MASK_MEMORY_BYTES:
                self._remembered.popitem(last=False)
        self._remembered.move_to_end(case_id)
        return self._remembered[case_id]

    def _read_masks(self, case_id: str) -> np.ndarray:
        raise NotImplementedError

    @contextlib.contextmanager
    def remembering(self):
        """Keeps the masks read inside the block (up to :data:`MASK_MEMORY_BYTES`); forgets them at its end."""
        outer = self._remembered
        self._remembered = collections.OrderedDict() if outer is None else outer
        try:
            yield self
        finally:
            self._remembered = outer


class ProposalCache(RemembersMasks):
    """Proposals of one (base model, plans, configuration, sources, K, seed), one file per case."""

    def __init__(self, root: str | os.PathLike, spec: dict, origin: dict | None = None):
        self.spec = json.loads(json.dumps(spec))  # as read back from the manifest (tuples become lists)
        self.origin = origin or {}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(root)
        self.folder = self.root / key

    @property
    def is_complete(self) -> bool:
        manifest = self.folder / "manifest.json"
        return manifest.is_file() and json.loads(manifest.read_text())["spec"] == self.spec

    def has_case(self, case_id: str, source: str | None = None) -> bool:
        """Whether the case's proposals are cached (and, given ``source``, made from that version of its image)."""
        if not (self.folder / f"{case_id}.npz").is_file():
            return False
        if source is None:
            return True
        recorded = self.folder / f"{case_id}.source"
        return recorded.is_file() and recorded.read_text() == source

    def save_case(self, case_id: str, masks: np.ndarray, probabilities: np.ndarray, source: str | None = None) -> None:
        """Writes the case's file atomically, then the digest of the image it was made from (``source``).

        Killed between the two writes, the old digest no longer matches and the case is made again.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / f"{case_id}.npz",
                     lambda f: np.savez_compressed(f, masks=masks, probabilities=probabilities))
        if source is not None:
            atomic_write_text(self.folder / f"{case_id}.source", source)

    def _read_masks(self, case_id: str) -> np.ndarray:
        """uint8 ``(K, *spatial)``."""
        with np.load(self.folder / f"{case_id}.npz") as f:
            return f["masks"]

    def probabilities(self, case_id: str) -> np.ndarray:
        """float16 ``(C, *spatial)``."""
        with np.load(self.folder / f"{case_id}.npz") as f:
            return f["probabilities"]

    def mark_complete(self, case_ids: list[str]) -> None:
        """Writes ``manifest.json``: the spec, the cases and ``origin`` (which base model made them, for
        ``nnUNetv2_rndpo_clean``'s listing)."""
        atomic_write_text(self.folder / "manifest.json",
                          json.dumps({"spec": self.spec, "cases": case_ids, "origin": self.origin}, indent=1))


def proposal_spec(
    base_weights: dict[str, torch.Tensor], plans_identifier: str, configuration: str, specs: list[ProposalSpec],
    seed: int, extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict:
    """Everything that determines the proposals, recorded in the cache manifest."""
    spec = {
        "base_weights_sha256": weights_sha256(base_weights),
        "plans": plans_identifier,
        "configuration": configuration,
        "proposals": [asdict(s) for s in specs],
        "seed": seed,
        "format": 1,
    }
    if extra_weights:
        spec["model_weights_sha256"] = {name: weights_sha256(w) for name, w in sorted(extra_weights.items())}
    return spec


def generate_proposals(
    cache: ProposalCache, pool, predictor, specs, label_manager, mirror_axes, device, progress: bool = True,
    case_ids: list[str] | None = None, all_case_ids: list[str] | None = None, seed: int = 0,
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None, cascade_labels: list[int] | None = None,
) -> int:
    """Fills ``cache`` for the cases not in it yet; returns the number of cases generated.

    A case counts as filled when its file exists and was made from the current version of its image
    (``pool.source_digest``, None = not checked), so an image replaced under the same case id gets new
    proposals.

    Args:
        case_ids: the cases to fill (one part of a split run); default every pool case.
        all_case_ids: the whole pool; the cache is marked complete once every one of them is there, so
            parts that run one after the other or in parallel fill one cache.
        seed: seeds the ``dropout`` samples.
        extra_weights: the ``model`` source's weights.
        cascade_labels: for a cascade, the labels of the previous-stage one-hot input channels
            (:func:`~nnunetv2_rndpo.cascade.pool_input`).
    """
    case_ids = pool.case_ids if case_ids is None else case_ids
    all_case_ids = pool.case_ids if all_case_ids is None else all_case_ids
    todo = [c for c in case_ids if not cache.has_case(c, pool.source_digest(c))]
    for case_id in tqdm(todo, desc="generating proposals", disable=not progress or not todo):
        image = torch.from_numpy(pool_input(pool, case_id, cascade_labels))
        masks, probabilities = propose_case(predictor, image.to(device), specs, label_manager, mirror_axes, seed,
                                            extra_weights)
        cache.save_case(case_id, masks, probabilities, pool.source_digest(case_id))
    if all(cache.has_case(c, pool.source_digest(c)) for c in all_case_ids):
        cache.mark_complete(list(all_case_ids))
    return len(todo)
