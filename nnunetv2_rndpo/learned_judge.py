"""A learned mask-quality judge: a small CNN that predicts a mask's Dice from (image, mask).

Trained only on labeled training cases (nnU-Net's preprocessed ``imagesTr``, the fold's training split):
each sample is a ground-truth mask corrupted by 1–3 random operations whose Dice to the truth is the
target. Corruptions (:func:`corrupt_mask`), chosen to look like segmentation errors:

- erosion or dilation of a class by 1–3 voxels;
- a shift of the whole mask by 1–4 voxels along one axis;
- a dropped connected component (a missed structure);
- a spurious ball-shaped component (a false positive);
- boundary noise: voxels within one voxel of a class boundary flipped with probability 0.3.

Input: the image channels and one channel per foreground class, resampled to a fixed grid
(``INPUT_SIZE``: 64×64 in 2D, 32×32×32 in 3D) so that one forward pass scores a whole case; output: a
sigmoid in [0, 1]. Assumption: a whole-case, low-resolution view is enough to rank proposals that differ
by more than a few voxels; it keeps the judge CPU-fast (milliseconds per proposal). The fold's
validation cases, corrupted the same way, measure the judge's reliability (saved with it).
Opt-in (``--with-proposals``): the base model's proposals of the fold's validation cases, with their
true Dice, join the training samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_rndpo.judges import mean_dice
from nnunetv2_rndpo.metrics import in_class, region_labels

INPUT_SIZE = {2: (64, 64), 3: (32, 32, 32)}
CORRUPTIONS = ("erode", "dilate", "shift", "drop_component", "spurious_component", "boundary_noise")


def corrupt_mask(label: np.ndarray, classes: list, rng: np.random.Generator, operations: int | None = None) -> np.ndarray:
    """Applies 1–3 random :data:`CORRUPTIONS` (``operations`` of them if given) to a label map ``(*spatial)``.

    Assumption: for region-based datasets a corruption acts on the region's highest label only.
    """
    mask = label.copy()
    fg_labels = [region_labels(c)[-1] for c in classes]
    for _ in range(operations if operations is not None else int(rng.integers(1, 4))):
        op = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        value = fg_labels[int(rng.integers(len(fg_labels)))]
        region = mask == value
        if op in ("erode", "dilate"):
            iterations = int(rng.integers(1, 4))
            if op == "erode":
                mask[region & ~ndimage.binary_erosion(region, iterations=iterations)] = 0
            else:
                mask[ndimage.binary_dilation(region, iterations=iterations) & (mask == 0)] = value
        elif op == "shift":
            mask = np.roll(mask, int(rng.choice([-1, 1]) * rng.integers(1, 5)), axis=int(rng.integers(mask.ndim)))
        elif op == "drop_component":
            components, n = ndimage.label(region)
            if n:
                mask[components == int(rng.integers(1, n + 1))] = 0
        elif op == "spurious_component":
            center = [int(rng.integers(s)) for s in mask.shape]
            radius = max(1.0, float(rng.uniform(0.05, 0.15)) * min(mask.shape))
            grid = np.ogrid[tuple(slice(0, s) for s in mask.shape)]
            ball = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2
            mask[ball & (mask == 0)] = value
        else:  # boundary_noise
            band = ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region)
            flip = band & (rng.random(mask.shape) < 0.3)
            mask[flip & region] = 0
            mask[flip & ~region & (mask == 0)] = value
    return mask


class QualityNet(torch.nn.Module):
    """Three conv blocks (16, 32, 64 channels, stride-2 pooling), global average pooling, a linear head.

    Input ``(B, C_img + n_classes, *INPUT_SIZE)``; output ``(B,)`` predicted Dice in [0, 1].
    """

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
        norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
        pool = torch.nn.MaxPool2d if dim == 2 else torch.nn.MaxPool3d
        layers, channels = [], in_channels
        for width in (16, 32, 64):
            layers += [conv(channels, width, 3, padding=1), norm(width, affine=True), torch.nn.LeakyReLU(0.01), pool(2)]
            channels = width
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).flatten(2).mean(-1)
        return torch.sigmoid(self.head(features))[:, 0]


def judge_input(image: np.ndarray, masks: np.ndarray, classes: list) -> torch.Tensor:
    """``(K, C_img + n_classes, *INPUT_SIZE)`` from an image ``(C_img, *spatial)`` and masks ``(K, *spatial)``."""
    dim = masks.ndim - 1
    if dim == 3 and masks.shape[1] == 1:  # nnU-Net's 2D configurations keep a singleton first axis
        image, masks, dim = image[:, 0], masks[:, 0], 2
    size = INPUT_SIZE[dim]
    mode = "bilinear" if dim == 2 else "trilinear"
    img = torch.nn.functional.interpolate(torch.as_tensor(np.asarray(image, np.float32))[None], size=size, mode=mode,
                                          align_corners=False)
    onehot = torch.stack([torch.as_tensor(in_class(masks, c)) for c in classes], 1).float()
    onehot = torch.nn.functional.interpolate(onehot, size=size, mode=mode, align_corners=False)
    return torch.cat([img.expand(len(masks), -1, *size), onehot], 1)


@dataclass
class LearnedJudge:
    """A trained :class:`QualityNet` with what it was trained for."""

    network: QualityNet
    classes: list
    in_channels: int
    dim: int
    metrics: dict

    @torch.inference_mode()
    def score(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``(K,)`` predicted Dice of the masks ``(K, *spatial)`` of one image ``(C_img, *spatial)``."""
        x = judge_input(image, masks, self.classes).to(next(self.network.parameters()).device)
        return self.network.eval()(x).float().cpu().numpy().astype(float)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        torch.save({"state_dict": self.network.state_dict(), "classes": self.classes, "in_channels": self.in_channels,
                    "dim": self.dim, "metrics": self.metrics}, temporary)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> LearnedJudge:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Learned judge {path} not found. Train it first with nnUNetv2_rndpo_train_judge -d D -c C -f F "
                "(same -tr/-p as the base model), or point learned_judge / --learned-judge at the file.")
        saved = torch.load(path, map_location=device, weights_only=False)
        network = QualityNet(saved["in_channels"], saved["dim"]).to(device)
        network.load_state_dict(saved["state_dict"])
        return cls(network.eval(), saved["classes"], saved["in_channels"], saved["dim"], saved.get("metrics", {}))


class LabeledCases(Mapping):
    """Preprocessed labeled cases ``{id: (image (C, *sp) float32, label (*sp) int16)}``, loaded on first use."""

    def __init__(self, dataset, identifiers: list[str]):
        self._dataset, self._ids, self._loaded, self._previous = dataset, list(identifiers), {}, {}

    def __getitem__(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._loaded:
            data, seg, previous, _ = self._dataset.load_case(key)
            self._loaded[key] = (np.asarray(data[:], np.float32), np.maximum(np.asarray(seg[:])[0], 0).astype(np.int16))
            if previous is not None:  # cascades: the previous stage's segmentation (nnU-Net's dataset class reads it)
                previous = np.asarray(previous[:])
                # predicted_next_stage holds (*spatial) label maps; a (1, *spatial) one is accepted too
                previous = previous[0] if previous.ndim == self._loaded[key][0].ndim else previous
                self._previous[key] = np.maximum(previous, 0).astype(np.int16)
        return self._loaded[key]

    def previous_stage(self, key: str) -> np.ndarray | None:
        """``(*spatial)`` previous-stage segmentation of a case (cascades only), or None."""
        self[key]
        return self._previous.get(key)

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def labeled_cases(base, fold: int | str) -> tuple[LabeledCases, list[str], list[str]]:
    """The preprocessed labeled cases (lazily loaded) and the fold's train/val ids.

    The split is nnU-Net's ``splits_final.json`` (fold ``all``: train = val = every case); without that file
    every case trains and none validates.
    """
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(nnUNet_preprocessed) / base.dataset_name / base.configuration_manager.data_identifier
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run nnUNetv2_plan_and_preprocess -d ... -c "
                                f"{base.configuration_name} first")
    previous = None if base.previous_stage is None else str(base.previous_stage.labeled_segmentations)
    dataset = infer_dataset_class(str(folder))(str(folder), folder_with_segs_from_previous_stage=previous)
    cases = LabeledCases(dataset, sorted(dataset.identifiers))
    splits_file = folder.parent / "splits_final.json"
    if str(fold) == "all" or not splits_file.is_file():
        return cases, sorted(cases), [] if str(fold) != "all" else sorted(cases)
    splits = json.loads(splits_file.read_text())
    split = splits[int(fold)] if int(fold) < len(splits) else {"train": sorted(cases), "val": []}
    return cases, sorted(split["train"]), sorted(split["val"])


def _samples(cases, ids, classes, per_case, rng, ignore_label=None) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = [], []
    for case_id in ids:
        image, label = cases[case_id]
        # a share of exact masks keeps the top of the scale calibrated
        masks = np.stack([label if k == 0 else corrupt_mask(label, classes, rng) for k in range(per_case)])
        inputs.append(judge_input(image, masks, classes))
        targets += [mean_dice(m, label, classes, ignore_label) for m in masks]
    return torch.cat(inputs), torch.tensor(targets, dtype=torch.float32)


def train_learned_judge(
    base, epochs: int = 40, samples_per_case: int = 16, batch_size: int = 32, learning_rate: float = 1e-3,
    seed: int = 12345, progress: bool = True,
    proposal_samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> LearnedJudge:
    """Trains a :class:`LearnedJudge` on the base model's fold training cases; reliability on its val cases.

    Fresh corruptions are drawn every epoch. ``metrics`` holds ``val/spearman/*``,
    ``val/pairwise/accuracy`` and ``val/top1/regret`` on the validation cases (8 corrupted masks each),
    and ``train/mse`` of the last epoch.

    Args:
        proposal_samples: optional ``(image (C, *sp), masks (K, *sp), true Dice (K,))`` of base-model
            proposals of held-out labeled cases, added to every epoch: real segmentation errors next to the
            simulated ones. Assumption: they come from the fold's validation cases, so the ``val/*`` metrics
            then no longer measure cases the judge never saw (``train/proposal_samples`` says so).

    Raises:
        ValueError: no labeled training cases in the split.
    """
    from nnunetv2_rndpo.reliability import judge_reliability

    cases, train_ids, val_ids = labeled_cases(base, base.fold)
    if not train_ids:
        raise ValueError(f"fold {base.fold} of {base.dataset_name} has no labeled training cases to train a judge on")
    classes, ignore_label = base.classes, base.label_manager.ignore_label
    rng = np.random.default_rng(seed)
    some_image, some_label = cases[train_ids[0]]
    dim = 2 if some_label.ndim == 2 or some_label.shape[0] == 1 else 3
    in_channels = some_image.shape[0] + len(classes)
    extra_x = extra_y = None
    if proposal_samples:
        extra_x = torch.cat([judge_input(image, masks, classes) for image, masks, _ in proposal_samples])
        extra_y = torch.tensor(np.concatenate([dice for _, _, dice in proposal_samples]), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = QualityNet(in_channels, dim)
        optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
        order = torch.Generator().manual_seed(seed)
        loss_value = float("nan")
        for _ in tqdm(range(epochs), desc="training learned judge", disable=not progress):
            x, y = _samples(cases, train_ids, classes, samples_per_case, rng, ignore_label)
            if extra_x is not None:
                x, y = torch.cat([x, extra_x]), torch.cat([y, extra_y])
            network.train()
            losses = []
            for batch in torch.randperm(len(y), generator=order).split(batch_size):
                loss = torch.nn.functional.mse_loss(network(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            loss_value = float(np.mean(losses))
    judge = LearnedJudge(network.eval(), classes, in_channels, dim, {
        "train/mse": loss_value, "train/cases": len(train_ids),
        "train/proposal_samples": 0 if extra_y is None else len(extra_y)})
    if val_ids:
        val_rng = np.random.default_rng(seed + 1)
        scores, dice = {}, {}
        for case_id in val_ids:
            image, label = cases[case_id]
            masks = np.stack([corrupt_mask(label, classes, val_rng) for _ in range(8)])
            scores[case_id] = judge.score(image, masks)
            dice[case_id] = np.array([mean_dice(m, label, classes, ignore_label) for m in masks])
        judge.metrics.update({f"val/{k}": v for k, v in judge_reliability(scores, dice).items()})
    return judge
