"""Hybrids: masks that differ from a proposal in one local part only, for ``local`` mining.

A mask-level judge says which of two masks is better overall, but two proposals differ in many independent
places (where two structures touch, their disagreement region D is one thin shell around both), and one
verdict covers all of them: even a perfect judge's pairs push part of D the wrong way. A hybrid takes one
*part* of D from the other mask, so a pair (proposal, hybrid) differs in that part only and a correct
verdict is correct on all of its D.

Construction, for the ``K`` base proposals of a case:

1. the **anchor** A is the base proposal that differs from the others in the fewest voxels (the medoid
   in Hamming distance; ties to the lower index);
2. for every other proposal B (a *donor*), D = {v : A_v ≠ B_v} is split into parts
   (:func:`disagreement_parts`): connected components of D with full connectivity (26 neighbours in 3D;
   with ``by_change``, of each change a → b of D separately), each halved recursively at the median of its
   longest axis until no part has more than ``part_voxels`` voxels; parts below ``min_part_voxels`` are
   dropped;
3. hybrid (A, B, part) = A with the part's voxels set to B's labels (multi-class and region-based masks
   alike: masks are label maps and a part takes B's labels voxel by voxel);
4. the parts of all donors, largest first (ties: lower donor, then the order of the split), identical
   hybrids once, at most ``per_case`` of them.

Hybrids are proposals like any other: the case's masks are the K base proposals followed by its H hybrids,
indices K … K+H−1, and every judge (and an external QC system, through the CSV) scores all K+H.

Cache: ``<proposal cache>/<key>/hybrids_<hybrid key>/<case>.npz`` beside the base proposals, with ``num_base``
(K), ``anchors`` and ``donors`` (``(H,)``, base indices), ``offsets`` (``(H+1,)``) and ``voxels`` (the flat
indices of the parts, concatenated; part h is ``voxels[offsets[h]:offsets[h+1]]``); the masks are rebuilt from
the base proposals when read. ``<hybrid key>`` hashes the base proposals' key and the hybrid settings. No
randomness is involved: hybrids are a function of the base proposals and the settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunetv2_rndpo.atomic_files import atomic_write, atomic_write_text
from nnunetv2_rndpo.proposals import RemembersMasks


@dataclass(frozen=True)
class HybridSettings:
    """How hybrids are made; mirrors ``local_part_voxels``, ``local_min_part_voxels``, (for the count)
    ``mining_max_pairs_per_case`` and ``local_split_by_change``: each hybrid gives one ``local`` pair."""

    part_voxels: int = 64
    min_part_voxels: int = 10
    per_case: int = 16
    by_change: bool = False

    def __post_init__(self) -> None:
        if self.min_part_voxels < 1 or self.part_voxels < self.min_part_voxels:
            raise ValueError(f"hybrid parts need 1 <= local_min_part_voxels <= local_part_voxels, got "
                             f"{self.min_part_voxels} and {self.part_voxels}")
        if self.per_case < 1:
            raise ValueError(f"hybrids per case must be >= 1, got {self.per_case}")

    @classmethod
    def from_config(cls, config) -> HybridSettings | None:
        """The settings of an :class:`~nnunetv2_rndpo.config.RNDPOConfig`; None unless ``mining`` is ``local``."""
        if config.mining != "local":
            return None
        return cls(config.local_part_voxels, config.local_min_part_voxels, config.mining_max_pairs_per_case,
                   config.local_split_by_change)


def hamming_medoid(masks: np.ndarray) -> int:
    """Index of the mask of ``masks`` ``(K, *spatial)`` that differs from the others in the fewest voxels.

    Assumption: the anchor of the hybrids is chosen without any judge (the medoid is the agreement judge's
    pick in Hamming distance), so that hybrids exist before a judge scores them and an external QC system
    scores them in one CSV with the proposals.
    """
    flat = masks.reshape(len(masks), -1)
    distance = [sum(int(np.count_nonzero(flat[k] != flat[j])) for j in range(len(flat)) if j != k)
                for k in range(len(flat))]
    return int(np.argmin(distance))


def _bisect(coordinates: np.ndarray, part_voxels: int) -> list[np.ndarray]:
    """Rows of ``coordinates`` ``(N, ndim)`` split into groups of at most ``part_voxels``: each group larger
    than that is halved at the median of the axis along which it extends furthest."""
    pending, parts = [np.arange(len(coordinates))], []
    while pending:
        rows = pending.pop()
        if len(rows) <= part_voxels:
            parts.append(rows)
            continue
        points = coordinates[rows]
        axis = int(np.argmax(points.max(0) - points.min(0)))
        ordered = rows[np.argsort(points[:, axis], kind="stable")]
        half = len(ordered) // 2
        pending += [ordered[half:], ordered[:half]]  # the lower half is split (and listed) first
    return parts


def disagreement_parts(mask_a: np.ndarray, mask_b: np.ndarray, part_voxels: int, min_part_voxels: int,
                       by_change: bool = False) -> list[np.ndarray]:
    """The parts of D = {v : a_v ≠ b_v}, as sorted flat voxel indices, largest first.

    Each connected component of D (full connectivity: voxels that share a face, edge or corner) is split by
    :func:`_bisect` into parts of at most ``part_voxels`` voxels; parts of fewer than ``min_part_voxels``
    are dropped. Every other voxel of D is in exactly one part. With ``by_change`` the components are those of
    each change (a_v, b_v) on its own, so that a part is one kind of change: a bulge of b (0 → 1) next to a dent
    (1 → 0), or a moved border between two classes (1 → 2) next to a grown class (0 → 1), are different
    parts, each a verdict of its own.

    Assumption: full connectivity, because a one-voxel-thick boundary shift along a diagonal boundary is
    connected only through edges and corners and would otherwise fall apart into single voxels; recursive
    median bisection (rather than a fixed grid of blocks, which cuts slivers off at every block border, or
    k-means, which needs a seed and does not bound the size) gives compact parts of ``part_voxels`` / 2 to
    ``part_voxels`` voxels. A part may be disconnected where a cut crosses a curved shell twice.

    Args:
        mask_a, mask_b: ``(*spatial)`` label maps of the same shape.
        part_voxels: the largest part.
        min_part_voxels: the smallest part kept.
    """
    from scipy import ndimage

    region = mask_a != mask_b
    structure = ndimage.generate_binary_structure(region.ndim, region.ndim)
    if by_change:
        change = np.where(region, mask_a.astype(np.int64) * (int(max(mask_a.max(), mask_b.max())) + 1) + mask_b, -1)
        components, count = np.zeros(region.shape, np.int64), 0
        for value in np.unique(change[region]):
            labeled, n = ndimage.label(change == value, structure)
            components[labeled > 0] = labeled[labeled > 0] + count
            count += n
    else:
        components, _ = ndimage.label(region, structure)
    flat = np.flatnonzero(components)
    component_of = components.ravel()[flat]
    order = np.argsort(component_of, kind="stable")
    flat, component_of = flat[order], component_of[order]
    starts = np.flatnonzero(np.diff(component_of, prepend=-1))
    parts = []
    for indices in np.split(flat, starts[1:]) if len(flat) else []:
        coordinates = np.stack(np.unravel_index(indices, region.shape), axis=1)
        parts += [np.sort(indices[rows]) for rows in _bisect(coordinates, part_voxels)]
    parts = [p for p in parts if len(p) >= min_part_voxels]
    return sorted(parts, key=len, reverse=True)  # stable: equal sizes keep the split's order


@dataclass
class HybridSet:
    """The hybrids of one case: hybrid h is ``anchors[h]`` with ``parts[h]`` (flat indices) taken from
    ``donors[h]``."""

    num_base: int
    anchors: np.ndarray
    donors: np.ndarray
    parts: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.parts)


def make_hybrids(masks: np.ndarray, settings: HybridSettings) -> HybridSet:
    """The hybrids of one case's base proposals ``(K, *spatial)`` (module docstring, steps 1–4)."""
    anchor = hamming_medoid(masks)
    candidates = []
    for donor in range(len(masks)):
        if donor != anchor:
            parts = disagreement_parts(masks[anchor], masks[donor], settings.part_voxels, settings.min_part_voxels,
                                       settings.by_change)
            candidates += [(donor, part) for part in parts]
    candidates.sort(key=lambda c: -len(c[1]))  # stable: ties keep the lower donor first
    donor_values = masks.reshape(len(masks), -1)
    chosen, seen = [], set()
    for donor, part in candidates:
        identity = part.tobytes() + donor_values[donor, part].tobytes()
        if identity not in seen:
            seen.add(identity)
            chosen.append((donor, part))
        if len(chosen) == settings.per_case:
            break
    return HybridSet(len(masks), np.full(len(chosen), anchor, dtype=np.int64),
                     np.array([d for d, _ in chosen], dtype=np.int64), [p for _, p in chosen])


def hybrid_masks(masks: np.ndarray, hybrids: HybridSet) -> np.ndarray:
    """``(H, *spatial)`` masks of the same dtype as the base proposals ``masks`` ``(K, *spatial)``."""
    flat = masks.reshape(len(masks), -1)
    result = np.empty((len(hybrids), flat.shape[1]), dtype=masks.dtype)
    for h, (anchor, donor, part) in enumerate(zip(hybrids.anchors, hybrids.donors, hybrids.parts, strict=True)):
        result[h] = flat[anchor]
        result[h, part] = flat[donor, part]
    return result.reshape((len(hybrids), *masks.shape[1:]))


class HybridCache(RemembersMasks):
    """The base proposals of a :class:`~nnunetv2_rndpo.proposals.ProposalCache` followed by their hybrids.

    Reads like a proposal cache (``masks``, ``probabilities``, ``has_case``, ``is_complete``, ``folder``), so
    judges, mining, reports and the patch sampler see K+H masks per case.
    """

    def __init__(self, proposals, settings: HybridSettings):
        self.proposals, self.settings = proposals, settings
        self.spec = {"proposals": proposals.folder.name, "hybrids": asdict(settings), "anchor": "hamming_medoid",
                     "format": 1}
        key = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(proposals.folder) / f"hybrids_{key}"

    @property
    def is_complete(self) -> bool:
        manifest = self.folder / "manifest.json"
        return (self.proposals.is_complete and manifest.is_file()
                and json.loads(manifest.read_text())["spec"] == self.spec)

    def has_case(self, case_id: str, source: str | None = None) -> bool:
        """Whether the case's base proposals (from this version of its image, given ``source``) and hybrids
        are cached."""
        if not self.proposals.has_case(case_id, source) or not (self.folder / f"{case_id}.npz").is_file():
            return False
        recorded = self.folder / f"{case_id}.source"
        return source is None or (recorded.is_file() and recorded.read_text() == source)

    def hybrids(self, case_id: str) -> HybridSet:
        with np.load(self.folder / f"{case_id}.npz") as f:
            offsets, voxels = f["offsets"], f["voxels"]
            return HybridSet(int(f["num_base"]), f["anchors"], f["donors"],
                             [voxels[offsets[h]:offsets[h + 1]] for h in range(len(offsets) - 1)])

    def num_base(self, case_id: str) -> int:
        """K, the number of base proposals of the case (the hybrids are indices K …)."""
        with np.load(self.folder / f"{case_id}.npz") as f:
            return int(f["num_base"])

    def _read_masks(self, case_id: str) -> np.ndarray:
        """uint8 ``(K + H, *spatial)``: the base proposals, then the hybrids."""
        masks = self.proposals.masks(case_id)
        return np.concatenate([masks, hybrid_masks(masks, self.hybrids(case_id))])

    def probabilities(self, case_id: str) -> np.ndarray:
        return self.proposals.probabilities(case_id)

    def save_case(self, case_id: str, hybrids: HybridSet, source: str | None = None) -> None:
        """Writes the case's hybrids atomically, then the digest of the image its proposals were made from."""
        self.folder.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0, *(len(p) for p in hybrids.parts)])
        voxels = np.concatenate(hybrids.parts) if len(hybrids) else np.zeros(0, np.int64)
        atomic_write(self.folder / f"{case_id}.npz", lambda f: np.savez_compressed(
            f, num_base=hybrids.num_base, anchors=hybrids.anchors, donors=hybrids.donors, offsets=offsets,
            voxels=voxels))
        if source is not None:
            atomic_write_text(self.folder / f"{case_id}.source", source)

    def mark_complete(self, case_ids: list[str]) -> None:
        atomic_write_text(self.folder / "manifest.json", json.dumps({"spec": self.spec, "cases": case_ids}, indent=1))


def generate_hybrids(cache: HybridCache, pool, case_ids: list[str] | None = None,
                     all_case_ids: list[str] | None = None, progress: bool = True) -> int:
    """Makes the hybrids of the cases (default all of ``pool``) whose base proposals are cached and whose
    hybrids are not; returns how many cases were made. Marks the cache complete once every case of
    ``all_case_ids`` (default the pool) has them."""
    case_ids = pool.case_ids if case_ids is None else case_ids
    all_case_ids = pool.case_ids if all_case_ids is None else all_case_ids
    todo = [c for c in case_ids if cache.proposals.has_case(c, pool.source_digest(c))
            and not cache.has_case(c, pool.source_digest(c))]
    for case_id in tqdm(todo, desc="making hybrids", disable=not progress or not todo):
        cache.save_case(case_id, make_hybrids(cache.proposals.masks(case_id), cache.settings),
                        pool.source_digest(case_id))
    if all(cache.has_case(c, pool.source_digest(c)) for c in all_case_ids):
        cache.mark_complete(list(all_case_ids))
    return len(todo)


def base_scores(cache, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scores of the base proposals only (the first K of each case) when ``cache`` holds hybrids."""
    if not isinstance(cache, HybridCache):
        return scores
    return {c: s[:cache.num_base(c)] for c, s in scores.items()}
