"""Patch boxes of the preference batches (fast, no training)."""

import numpy as np

from nnunetv2_rndpo.sampling import patch_bbox


def test_patch_bbox_centres_on_the_voxel_and_stays_in_nnunet_bounds():
    rng = np.random.default_rng(0)
    box = patch_bbox((40, 40), (20, 20), (16, 16), (30, 10), rng)
    assert box == [[20, 40], [0, 20]]
    for _ in range(200):
        box = patch_bbox((10, 40), (20, 20), (16, 16), None, rng)
        assert -5 <= box[0][0] <= -5 and -2 <= box[1][0] <= 22
