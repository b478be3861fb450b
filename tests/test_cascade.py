"""Cascade plumbing without training: the network input, the patches and the start-up checks."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nnunetv2_rndpo.cascade import PreviousStage, network_input, pool_input, previous_stage_of
from nnunetv2_rndpo.mining import Pair
from nnunetv2_rndpo.pool import PoolCase
from nnunetv2_rndpo.sampling import PairPatchSampler


def test_network_input_appends_one_hot_previous_stage_as_nnunet_does():
    image = np.full((2, 3, 4), 5.0, np.float32)
    previous = np.array([[0, 1, 2, 2], [1, 1, 0, -1], [0, 0, 0, 2]])
    x = network_input(image, previous, [1, 2])
    assert x.shape == (4, 3, 4) and x.dtype == np.float32
    assert np.array_equal(x[:2], image)
    assert np.array_equal(x[2], previous == 1) and np.array_equal(x[3], previous == 2)
    assert network_input(image, None, None) is not None and network_input(image, None, None).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="previous stage's segmentation"):
        network_input(image, None, [1])
    # pool_input reads the previous stage only for a cascade
    pool = SimpleNamespace(image=lambda c: image, previous_stage=lambda c: previous)
    assert pool_input(pool, "a", [1, 2]).shape == (4, 3, 4)
    assert pool_input(SimpleNamespace(image=lambda c: image), "a", None).shape == (2, 3, 4)


def test_cascade_patches_carry_the_previous_stage_channels():
    image = np.random.default_rng(0).normal(size=(1, 12, 12)).astype(np.float32)
    masks = np.zeros((2, 12, 12), np.uint8)
    masks[0, 3:8, 3:8] = 1
    previous = np.zeros((12, 12), np.int16)
    previous[2:9, 2:9] = 1
    pool = SimpleNamespace(image=lambda c: image, previous_stage=lambda c: previous)
    cache = SimpleNamespace(masks=lambda c: masks)
    pair = Pair("a", 0, 1, 1.0, 0.0, int((masks[0] != masks[1]).sum()))
    sampler = PairPatchSampler([pair], pool, cache, (12, 12), (12, 12), None, 0.0, np.random.default_rng(0), [1])
    sampler.patch_was_2d, sampler.crop_size, sampler.final_size = False, (12, 12), (12, 12)
    patch, patch_masks = sampler.sample(pair)
    assert patch.shape == (2, 12, 12) and patch_masks.shape == (2, 12, 12)
    assert np.array_equal(patch[1].numpy(), previous == 1)  # the one-hot previous stage follows the image
    assert np.array_equal(patch_masks.numpy(), masks)  # (chosen, rejected), the previous stage moved out


def test_previous_stage_of_plain_configuration_is_none():
    assert previous_stage_of(SimpleNamespace(previous_stage_name=None), "3d_fullres", "D", "T", "P", 0) is None


def test_missing_previous_stage_is_a_clear_error_naming_the_command(tmp_path):
    stage = PreviousStage(tmp_path / "T__P__3d_lowres", 0, "3d_lowres", "3d_cascade_fullres", "T")
    with pytest.raises(FileNotFoundError, match="nnUNetv2_train D 3d_lowres 0 -tr T -p P"):
        stage.require("D", "P")
    (stage.checkpoint_file.parent).mkdir(parents=True)
    stage.checkpoint_file.write_bytes(b"x")
    stage.labeled_segmentations.mkdir(parents=True)
    (stage.labeled_segmentations / "a.b2nd").write_bytes(b"x")
    stage.require("D", "P", ["a"])
    with pytest.raises(FileNotFoundError, match=r"(?s)1 labeled case\(s\) \(e.g. \['b'\]\).*for every fold"):
        stage.require("D", "P", ["a", "b"])


def test_segmentation_files_are_keyed_by_the_previous_stage_checkpoint(tmp_path):
    stage = PreviousStage(tmp_path / "model", "all", "3d_lowres", "3d_cascade_fullres", "T")
    stage.checkpoint_file.parent.mkdir(parents=True)
    stage.checkpoint_file.write_bytes(b"x")
    cases = [PoolCase("a", (str(tmp_path / "a_0000.nii.gz"),))]
    first = stage.with_segmentations(cases, tmp_path / "seg", ".nii.gz")[0].previous_stage_file
    assert first.endswith("a.nii.gz") and Path(first).parent.parent == tmp_path / "seg"
    stage.checkpoint_file.write_bytes(b"retrained")
    assert stage.with_segmentations(cases, tmp_path / "seg", ".nii.gz")[0].previous_stage_file != first


def test_intensity_proposals_on_a_cascade_are_refused_at_start():
    from nnunetv2_rndpo.pipeline import ProposalSettings, proposal_cache

    base = SimpleNamespace(previous_stage=object(), configuration_name="3d_cascade_fullres")
    with pytest.raises(ValueError,
                       match="'intensity' is not supported for the cascade configuration 3d_cascade_fullres"):
        proposal_cache(base, ProposalSettings(sources=("mirror", "intensity")))


def test_labeled_cases_read_the_previous_stage_as_nnunets_dataset_gives_it():
    from nnunetv2_rndpo.pool import LabeledCases

    data, seg = np.zeros((1, 2, 3, 4), np.float32), np.ones((1, 2, 3, 4), np.int8)
    previous = np.full((2, 3, 4), 2, np.int8)  # predicted_next_stage: a (*spatial) label map
    dataset = SimpleNamespace(load_case=lambda key: (data, seg, previous, {}))
    cases = LabeledCases(dataset, ["a"])
    assert cases.previous_stage("a").shape == (2, 3, 4) and (cases.previous_stage("a") == 2).all()
    assert cases["a"][0].shape == (1, 2, 3, 4)
    plain = LabeledCases(SimpleNamespace(load_case=lambda key: (data, seg, None, {})), ["a"])
    assert plain.previous_stage("a") is None
