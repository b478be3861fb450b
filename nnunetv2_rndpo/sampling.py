"""Patches for the preference phase: crops centred on the disagreement region, augmented like nnU-Net.

nnU-Net oversamples foreground: a third of its patches are centred on a labelled voxel. The preference
phase applies the same idea to the disagreement region D of a pair: with probability
``disagreement_oversample`` the patch is centred on a random voxel of D, otherwise anywhere. The crop is
nnU-Net's enlarged ``initial_patch_size`` and then goes through nnU-Net's own training transforms
(``get_training_transforms``) with the image and the masks together, so the image, chosen and rejected
masks get exactly the same spatial augmentation, and the result has the planned patch size.
"""

from __future__ import annotations

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from threadpoolctl import threadpool_limits

from nnunetv2_rndpo.cascade import network_input


def patch_bbox(
    shape: tuple[int, ...],
    crop_size: tuple[int, ...],
    final_size: tuple[int, ...],
    center: tuple[int, ...] | None,
    rng: np.random.Generator,
) -> list[list[int]]:
    """A box of ``crop_size`` in an image of ``shape``, centred on ``center`` or drawn uniformly.

    nnU-Net's rule (``nnUNetDataLoader.get_bbox``): the box may extend past the image by half of
    ``crop_size − final_size`` (or more if the image is smaller than the crop); the crop is padded.
    """
    box = []
    for d, (size, crop, final) in enumerate(zip(shape, crop_size, final_size, strict=True)):
        need = max(crop - final, crop - size, 0)
        low, high = -(need // 2), size + need // 2 + need % 2 - crop
        start = rng.integers(low, high + 1) if center is None else int(np.clip(center[d] - crop // 2, low, high))
        box.append([int(start), int(start) + crop])
    return box


class PairPatchSampler:
    """Draws augmented patches of (image, chosen mask, rejected mask) for a list of pairs.

    Args:
        pairs: mined :class:`~nnunetv2_rndpo.mining.Pair` objects.
        pool: the :class:`~nnunetv2_rndpo.pool.PreprocessedPool` (images).
        proposals: the :class:`~nnunetv2_rndpo.proposals.ProposalCache` (masks).
        patch_size: the planned patch size (2 or 3 axes).
        initial_patch_size: nnU-Net's enlarged crop before spatial augmentation.
        transforms: nnU-Net training transforms mapping ``image, segmentation`` to the patch size, or None.
        oversample: probability of centring a patch on a voxel of D.
        rng: the sampler's own generator (its state is saved with checkpoints).
        cascade_labels: for a cascade network, the foreground labels: the pool's previous-stage segmentation
            becomes one-hot input channels, augmented as nnU-Net's cascade training does (``transforms`` made with
            ``is_cascaded=True``); None otherwise.
    """

    def __init__(self, pairs, pool, proposals, patch_size, initial_patch_size, transforms, oversample, rng,
                 cascade_labels: list[int] | None = None):
        self.pairs, self.pool, self.proposals, self.cascade_labels = pairs, pool, proposals, cascade_labels
        self.patch_was_2d = len(patch_size) == 2
        self.crop_size = (1, *initial_patch_size) if self.patch_was_2d else tuple(initial_patch_size)
        self.final_size = (1, *patch_size) if self.patch_was_2d else tuple(patch_size)
        self.transforms, self.oversample, self.rng = transforms, oversample, rng

    def sample(self, pair) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """Returns ``(image (C, *patch), masks)``; masks are ``(2, *patch)`` int16 = (chosen, rejected), or a
        list of those per deep-supervision scale when the transforms downsample for deep supervision."""
        image = self.pool.image(pair.case_id)
        all_masks = self.proposals.masks(pair.case_id)
        masks = [all_masks[pair.chosen], all_masks[pair.rejected]]
        if self.cascade_labels is not None:
            # nnU-Net's cascade transforms move segmentation channel 1 into the data as one-hot channels
            masks.insert(1, self.pool.previous_stage(pair.case_id))
        masks = np.stack(masks)
        center = None
        if self.rng.random() < self.oversample:
            region = np.argwhere(masks[0] != masks[-1])
            center = tuple(region[self.rng.integers(len(region))])
        box = patch_bbox(image.shape[1:], self.crop_size, self.final_size, center, self.rng)
        # a copy: the crop of an image larger than the patch is a view of the pool's read-only memory map, and
        # nnU-Net's augmentation works in place (writing into the map crashed the process with a segfault)
        image_patch = torch.from_numpy(np.array(crop_and_pad_nd(image, [[0, image.shape[0]], *box], 0), np.float32))
        mask_patch = torch.from_numpy(crop_and_pad_nd(masks, [[0, len(masks)], *box], 0).astype(np.int16))
        if self.patch_was_2d:
            image_patch, mask_patch = image_patch[:, 0], mask_patch[:, 0]
        if self.transforms is not None:
            out = self.transforms(image=image_patch, segmentation=mask_patch)
            image_patch, mask_patch = out["image"], out["segmentation"]
        elif self.cascade_labels is not None:
            image_patch = torch.from_numpy(network_input(image_patch.numpy(), mask_patch[1].numpy(),
                                                         self.cascade_labels))
            mask_patch = mask_patch[[0, 2]]
        return image_patch, mask_patch

    def batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A batch of pairs drawn uniformly with replacement.

        Returns:
            ``{"data": (B, C, *patch), "target": [(B, 2, *patch_s) per scale]}``; channel 0 of a target is the
            chosen mask, channel 1 the rejected one; scale 0 is full resolution.
        """
        indices = self.rng.integers(len(self.pairs), size=batch_size)
        # as nnU-Net's own loader (nnUNetDataLoader.generate_train_batch): no autograd, one thread per worker;
        # multi-threaded ops on patch-sized tensors cost more in synchronisation than they gain
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            images, masks = zip(*(self.sample(self.pairs[i]) for i in indices), strict=True)
            if isinstance(masks[0], list):
                target = [torch.stack([m[s] for m in masks]) for s in range(len(masks[0]))]
            else:
                target = [torch.stack(masks)]
            data = torch.stack(images)
        return {"data": data, "target": target}


class PreferenceBatchLoader:
    """Endless preference batches: the object nnU-Net's augmenters pull from, in the main process or in workers.

    With ``nnUNet_n_proc_DA`` > 0 the loader runs in nnU-Net's ``NonDetMultiThreadedAugmenter`` workers,
    like nnU-Net's own training loader, so patch cropping and augmentation overlap the GPU step. Each worker
    draws from its own generator, ``default_rng([seed, worker + 1])`` (:meth:`set_thread_id`).

    Assumption: with workers the order of batches is not reproducible (as in nnU-Net); with
    ``nnUNet_n_proc_DA=0`` it is, and the sampler's state is saved with each checkpoint.
    """

    def __init__(self, sampler: PairPatchSampler, batch_size: int, seed: int):
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed

    def set_thread_id(self, thread_id: int) -> None:
        self.sampler.rng = np.random.default_rng([self.seed, thread_id + 1])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.sampler.batch(self.batch_size)
