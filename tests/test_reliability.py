"""Bad input, interrupted writes, numerics and the version guard, in-process (fast tier).

Each bad input must give a message that says what is wrong, where and how to fix it, and leave what is
already on disk untouched. The e2e counterparts (killed processes, resume, determinism) are in
``test_e2e_reliability.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_rndpo import proposals as proposals_module
from nnunetv2_rndpo.checkpoint import base_weights
from nnunetv2_rndpo.compat import require_supported_nnunet
from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.mining import MiningParams, Pair, mine_pool, require_trainable_pairs
from nnunetv2_rndpo.objective import (
    agreement_loss,
    consistency_loss,
    disagreement_region,
    pair_log_ratios,
    preference_loss,
)
from nnunetv2_rndpo.pipeline import prepare_pool, require_complete
from nnunetv2_rndpo.pool import BadCaseError
from nnunetv2_rndpo.proposals import ProposalCache, generate_proposals

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- bad pool cases


class PassThroughPreprocessor:
    """nnU-Net's preprocessor interface without resampling or normalisation (the readers are the real ones)."""

    def __init__(self, verbose: bool = False):
        pass

    def run_case_npy(self, data, seg, properties, *args):
        return data, seg, properties


def fake_base(root: Path, dim: int) -> SimpleNamespace:
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    spacing = [999.0, 1.0, 1.0] if dim == 2 else [1.0, 1.0, 1.0]
    return SimpleNamespace(
        raw_folder=root / "raw",
        cache_folder=root / "cache",
        dataset_json={"file_ending": ".png" if dim == 2 else ".nii.gz", "channel_names": {"0": "gray"}},
        plans_manager=SimpleNamespace(image_reader_writer_class=NaturalImage2DIO if dim == 2 else SimpleITKIO,
                                      plans={"original_median_spacing_after_transp": spacing}),
        configuration_manager=SimpleNamespace(preprocessor_class=PassThroughPreprocessor),
        previous_stage=None,
    )


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_bad_pool_cases_stop_or_are_skipped_and_rejoin_once_fixed(tmp_path):
    base = fake_base(tmp_path, 2)
    images = base.raw_folder / "imagesUnlabeled"
    write_png(images / "good_0000.png", np.arange(64).reshape(8, 8))
    pool = prepare_pool(base, progress=False)  # one good case, cached
    cached = snapshot(pool.folder)
    (images / "broken_0000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated by a failed copy")
    write_png(images / "rgb_0000.png", np.zeros((8, 8, 3)))

    with pytest.raises(BadCaseError, match=r"pool case 'broken' could not be read \(.*broken_0000.png\).*"
                                           r"Fix or remove the file, or set \"on_bad_case\": \"skip\""):
        prepare_pool(base, progress=False)
    assert snapshot(pool.folder) == cached  # the good case's cache is untouched

    warnings = []
    pool = prepare_pool(base, progress=False, on_bad_case="skip", log=warnings.append)
    assert pool.case_ids == ["good"]
    (warning,) = warnings
    assert "skipped 2 of 3 pool cases" in warning and "on_bad_case='skip'" in warning
    assert "broken_0000.png" in warning
    assert "'rgb'" in warning and "has 3 channel(s) but dataset.json declares 1" in warning
    assert {k: v for k, v in snapshot(pool.folder).items() if not k.endswith(".bad.json")} == cached

    write_png(images / "broken_0000.png", np.ones((8, 8)))  # repaired: it rejoins the pool
    (images / "rgb_0000.png").unlink()
    pool = prepare_pool(base, progress=False, on_bad_case="skip", log=warnings.append)
    assert pool.case_ids == ["broken", "good"] and len(warnings) == 1
    assert not (pool.folder / "broken.bad.json").exists()


def test_a_2d_image_in_a_3d_dataset_is_a_bad_case(tmp_path):
    import SimpleITK as sitk

    base = fake_base(tmp_path, 3)
    images = base.raw_folder / "imagesUnlabeled"
    images.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), str(images / "vol_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(images / "slice_0000.nii.gz"))
    with pytest.raises(BadCaseError, match=r"pool case 'slice' \(.*slice_0000.nii.gz\) is a 2D image .* but the "
                                           r"dataset is 3D: save it with the dimensionality of imagesTr"):
        prepare_pool(base, progress=False)
    assert prepare_pool(base, progress=False, on_bad_case="skip", log=lambda _: None).case_ids == ["vol"]


def write_nifti(path: Path, array: np.ndarray) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def truncate(path: Path, keep: float = 0.5) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])


def nan_volume() -> np.ndarray:
    volume = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    volume[2, 3, 4] = np.nan
    return volume


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_a_truncated_nifti_stops_or_is_skipped_naming_the_file(tmp_path, ending):
    base = fake_base(tmp_path, 3)
    base.dataset_json["file_ending"] = ending
    images = base.raw_folder / "imagesUnlabeled"
    write_nifti(images / f"good_0000{ending}", np.ones((6, 8, 8), np.float32))
    write_nifti(images / f"cut_0000{ending}", np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    truncate(images / f"cut_0000{ending}")
    with pytest.raises(BadCaseError, match=rf"pool case 'cut': .*cut_0000{ending.replace('.', '[.]')} is truncated or "
                                           r"corrupt .*copy it again from its source.*\"on_bad_case\": \"skip\""):
        prepare_pool(base, progress=False)
    warnings = []
    assert prepare_pool(base, progress=False, on_bad_case="skip", log=warnings.append).case_ids == ["good"]
    assert "cut_0000" in warnings[0] and "truncated" in warnings[0]


def test_a_corrupt_gzip_stream_is_a_bad_case(tmp_path):
    base = fake_base(tmp_path, 3)
    path = base.raw_folder / "imagesUnlabeled" / "flipped_0000.nii.gz"
    write_nifti(path, np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    content = bytearray(path.read_bytes())
    content[-8] ^= 0xFF  # gzip's CRC of the voxels no longer matches: SimpleITK refuses the file
    path.write_bytes(bytes(content))
    with pytest.raises(BadCaseError, match=r"pool case 'flipped' could not be read \(.*flipped_0000.nii.gz\)"):
        prepare_pool(base, progress=False)


@pytest.mark.parametrize("where", ["image", "label"])
def test_nan_voxels_stop_or_are_skipped_naming_the_file(tmp_path, where):
    base = fake_base(tmp_path, 3)
    images, labels = base.raw_folder / "imagesUnlabeled", base.raw_folder / "labelsUnlabeled"
    for case in ("good", "holey"):
        write_nifti(images / f"{case}_0000.nii.gz", np.ones((6, 8, 8), np.float32))
        write_nifti(labels / f"{case}.nii.gz", np.zeros((6, 8, 8), np.float32))
    bad_file = images / "holey_0000.nii.gz" if where == "image" else labels / "holey.nii.gz"
    write_nifti(bad_file, nan_volume())
    with pytest.raises(BadCaseError, match=rf"pool case 'holey': .*{bad_file.name} has 1 NaN and 0 infinite "
                                           r"voxel\(s\) of 384; nnU-Net's reader would read NaN as 0.*Replace them"):
        prepare_pool(base, progress=False)
    assert prepare_pool(base, progress=False, on_bad_case="skip", log=lambda _: None).case_ids == ["good"]


def test_a_pool_of_only_bad_cases_is_an_error(tmp_path):
    base = fake_base(tmp_path, 2)
    (base.raw_folder / "imagesUnlabeled").mkdir(parents=True)
    (base.raw_folder / "imagesUnlabeled" / "x_0000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="every case of the unlabeled pool .* is bad"):
        prepare_pool(base, progress=False, on_bad_case="skip", log=lambda _: None)


def test_a_changed_image_changes_its_digest(tmp_path):
    base = fake_base(tmp_path, 2)
    path = base.raw_folder / "imagesUnlabeled" / "a_0000.png"
    write_png(path, np.zeros((8, 8)))
    pool = prepare_pool(base, progress=False)
    before = pool.source_digest("a")
    write_png(path, np.ones((8, 9)))
    pool = prepare_pool(base, progress=False)
    assert pool.source_digest("a") != before and pool.image("a").shape == (1, 1, 8, 9)
    assert pool.source_digest("missing") == "not preprocessed"


# ---------------------------------------------------------------- proposal cache and interruption


class FakePool:
    def __init__(self, digests: dict[str, str]):
        self.digests, self.case_ids = digests, sorted(digests)

    def image(self, case_id: str) -> np.ndarray:
        return np.zeros((1, 4, 4), np.float32)

    def source_digest(self, case_id: str) -> str:
        return self.digests[case_id]


@pytest.fixture
def counted_proposals(monkeypatch):
    made = []

    def propose(predictor, image, specs, *args):
        made.append(len(made))
        masks = np.stack([np.full((4, 4), k % 2, np.uint8) for k in range(2)])
        return masks, np.zeros((2, 4, 4), np.float16)

    monkeypatch.setattr(proposals_module, "propose_case", propose)
    return made


def generate(cache, pool):
    return generate_proposals(cache, pool, None, [], None, (), "cpu", progress=False)


def test_proposals_are_remade_for_a_changed_image_and_after_a_kill(tmp_path, counted_proposals):
    cache, pool = ProposalCache(tmp_path, {"seed": 1}), FakePool({"a": "v1", "b": "v1"})
    assert generate(cache, pool) == 2 and cache.is_complete
    assert generate(cache, pool) == 0  # a rerun reuses complete cases

    pool.digests["a"] = "v2"  # same case id, new image
    with pytest.raises(FileNotFoundError, match=r"No current proposals for 1 of 2 pool cases \(e.g. \['a'\]: "
                                                r"missing, or made from an older version of the image\)"):
        require_complete(cache, pool)
    assert generate(cache, pool) == 1 and cache.has_case("a", "v2")

    # killed mid-write: a temporary file was left and the case file exists without its digest
    (cache.folder / "b.tmp.npz").write_bytes(b"half written")
    (cache.folder / "b.source").unlink()
    assert not cache.has_case("b", "v1")
    assert generate(cache, pool) == 1 and cache.has_case("b", "v1")
    assert np.array_equal(cache.masks("b")[1], np.ones((4, 4)))


def test_proposal_writes_are_atomic(tmp_path, monkeypatch):
    cache = ProposalCache(tmp_path, {"seed": 1})
    cache.save_case("a", np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.float16), "v1")
    before = snapshot(cache.folder)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while the new file is being written

    monkeypatch.setattr(np, "savez_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.save_case("a", np.ones((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.float16), "v2")
    assert snapshot(cache.folder) == before and cache.has_case("a", "v1")


# ---------------------------------------------------------------- pairs


def test_a_case_with_identical_proposals_is_reported_not_a_crash(tmp_path):
    cache = ProposalCache(tmp_path, {"seed": 1})
    probabilities = np.zeros((2, 4, 4), np.float16)
    cache.save_case("varied", np.stack([np.zeros((4, 4)), np.ones((4, 4))]).astype(np.uint8), probabilities)
    cache.save_case("same", np.zeros((3, 4, 4), np.uint8), probabilities)
    scores = {"varied": np.array([0.1, 0.9]), "same": np.array([0.1, 0.5, 0.9])}
    pairs, stats = mine_pool(cache, ["same", "varied"], scores, MiningParams(), seed=0)
    assert [p.case_id for p in pairs] == ["varied"] and stats["pairs/identical_cases"] == 1


def test_no_trainable_pair_stops_before_training():
    with pytest.raises(ValueError, match="No preference pairs from the 5 pool cases: the proposals of every case are "
                                         "identical.*raise num_proposals"):
        require_trainable_pairs([], 10, 5)
    small = [Pair("a", 0, 1, 0.9, 0.1, region_size=3), Pair("b", 0, 1, 0.9, 0.1, region_size=6)]
    with pytest.raises(ValueError, match=r"Every one of the 2 pairs would be skipped: the largest disagreement .* "
                                         r"is 6 voxels, below min_region_voxels=10. "
                                         r"Lower min_region_voxels \(e.g. to 6\)"):
        require_trainable_pairs(small, 10, 5)
    require_trainable_pairs(small, 6, 5)


# ---------------------------------------------------------------- base checkpoint


EXPECTED = {"encoder.conv.weight": torch.zeros(4, 1, 3, 3), "decoder.seg_layers.0.weight": torch.zeros(2, 4, 1, 1)}


def checkpoint(configuration: str = "2d", **weights) -> dict:
    return {"network_weights": {**EXPECTED, **weights}, "init_args": {"configuration": configuration}}


@pytest.mark.parametrize(
    "content, message",
    [
        ({"state_dict": {}}, "is not an nnU-Net checkpoint \\(no 'network_weights'\\); point base_checkpoint"),
        (checkpoint("3d_fullres"), "was trained for configuration '3d_fullres', but this run is '2d'. Train with the "
                                   "base model's configuration, or point base_checkpoint"),
        (checkpoint(**{"decoder.seg_layers.0.weight": torch.zeros(3, 4, 1, 1)}),
         "predicts 3 classes, but this dataset has 2 .* another dataset or label set. Point base_checkpoint"),
        (checkpoint(**{"encoder.conv.weight": torch.zeros(8, 1, 3, 3)}),
         "does not fit this dataset's 2d network \\(e.g. \\['encoder.conv.weight'\\]\\): "
         "was it trained with other plans"),
    ],
)
def test_base_checkpoint_that_does_not_fit(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        base_weights(content, tmp_path / "checkpoint_final.pth", "2d", EXPECTED, 2)


def test_base_checkpoint_from_ddp_loads():
    ddp = {"network_weights": {f"module.{k}": v for k, v in EXPECTED.items()}, "init_args": {"configuration": "2d"}}
    assert set(base_weights(ddp, Path("x.pth"), "2d", EXPECTED, 2)) == set(EXPECTED)


# ---------------------------------------------------------------- config keys of this issue


def test_on_bad_case_and_save_every_are_validated():
    assert RNDPOConfig().on_bad_case == "stop" and RNDPOConfig().save_every >= 1
    with pytest.raises(ValueError, match="config key 'on_bad_case': 'ignore' is not allowed; valid: stop, skip"):
        RNDPOConfig(on_bad_case="ignore")
    with pytest.raises(ValueError, match="config key 'save_every': 0 is out of range; must be >= 1"):
        RNDPOConfig(save_every=0)


# ---------------------------------------------------------------- numerics


def autocast_dtypes() -> list[torch.dtype]:
    dtypes = [torch.bfloat16]
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1))
        dtypes.append(torch.float16)
    except (RuntimeError, AssertionError):
        pass
    return dtypes


@pytest.mark.parametrize("dtype", autocast_dtypes(), ids=str)
@pytest.mark.parametrize("regions", [None, [(1,)]], ids=["softmax", "regions"])
def test_objective_under_autocast_with_logits_of_1e4_is_finite(dtype, regions):
    """The trainer's whole objective (preference + both label-free anchors) from a network's output under
    autocast, with logits pushed to ±1e4: the loss and every parameter's gradient stay finite."""
    generator = torch.Generator().manual_seed(0)
    channels = 2 if regions is None else 1
    network = torch.nn.Conv2d(1, channels, 3, padding=1)
    image = torch.randn(2, 1, 16, 16, generator=generator)
    chosen = torch.randint(0, 2, (2, 16, 16), generator=generator)
    rejected = torch.randint(0, 2, (2, 16, 16), generator=generator)
    with torch.autocast("cpu", dtype=dtype):
        logits = network(image)
        logits = logits / logits.detach().abs().amax() * 1e4  # ±1e4 at the extremes
        reference = -logits.detach()
        ratios = pair_log_ratios(logits, reference, chosen, rejected, regions=regions)
        outside = ~disagreement_region(chosen, rejected)
        for loss_type in ("sigmoid", "hinge", "robust"):
            out = preference_loss(ratios.chosen_logratios, ratios.rejected_logratios, ratios.region_sizes,
                                  ratios.volumes, beta=1.0, loss_type=loss_type, normalization="region",
                                  label_smoothing=0.1)
            total = (out.loss + consistency_loss(logits, reference, outside, regions=regions).mean()
                     + agreement_loss(logits, chosen, rejected, regions=regions).mean())
            assert logits.dtype == dtype and torch.isfinite(total), loss_type
            grads = torch.autograd.grad(total, list(network.parameters()), retain_graph=True)
            assert all(torch.isfinite(g).all() for g in grads), loss_type


# ---------------------------------------------------------------- version guard


@pytest.mark.parametrize("version", ["2.8.1", "2.8.7", "2.8.10.post1"])
def test_supported_nnunet_versions_pass(version):
    require_supported_nnunet(version)


@pytest.mark.parametrize("version", ["2.9.0", "2.8.0", "2.7", "3.0.0rc1"])
def test_unsupported_nnunet_versions_name_both_and_the_fix(version):
    with pytest.raises(ImportError, match=f"nnunetv2 {version} is installed, but the RN-DPO trainers support "
                                          r"nnunetv2>=2.8.1,<2.9 only .* pip install 'nnunetv2>=2.8.1,<2.9'"):
        require_supported_nnunet(version)


def import_fresh(name: str, path: Path | None = None):
    if path is None:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("module, path", [("nnunetv2_rndpo.trainer", None),
                                          ("rndpo_trainers", REPO / "trainers" / "rndpo_trainers.py")])
def test_importing_the_trainers_with_another_nnunet_is_a_clear_error(monkeypatch, module, path):
    real_version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "2.9.1" if name == "nnunetv2" else real_version(name))
    monkeypatch.delitem(sys.modules, "nnunetv2_rndpo.trainer", raising=False)  # restored after the test
    with pytest.raises(ImportError, match="nnunetv2 2.9.1 is installed, but the RN-DPO trainers support"):
        import_fresh(module, path)


def test_a_missing_nnunet_is_a_clear_error(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(ImportError, match="nnunetv2 is not installed; .* pip install 'nnunetv2>=2.8.1,<2.9'"):
        require_supported_nnunet()


def test_a_metrics_line_cut_off_by_a_kill_is_skipped(tmp_path):
    from nnunetv2_rndpo.atomic_files import read_jsonl

    path = tmp_path / "rndpo_metrics.jsonl"
    path.write_text('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo')
    assert read_jsonl(path) == [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]


def test_patches_are_copies_of_the_pool_image(tmp_path):
    """The crop of an image larger than the patch must not be a view of the pool image: that is a read-only
    memory map, and nnU-Net's augmentation writes into the patch in place (a segfault in training)."""
    from nnunetv2_rndpo.sampling import PairPatchSampler

    original = np.arange(96 * 96, dtype=np.float32).reshape(1, 1, 96, 96)
    image = original.copy()  # writable here, so that aliasing shows as a changed image instead of a crash
    cache = ProposalCache(tmp_path, {"seed": 1})
    cache.save_case("a", np.stack([np.zeros((1, 96, 96)), np.ones((1, 96, 96))]).astype(np.uint8),
                    np.zeros((2, 1, 96, 96), np.float16))
    pair = Pair("a", 1, 0, 0.9, 0.1, 96 * 96)
    sampler = PairPatchSampler([pair], SimpleNamespace(image=lambda case_id: image), cache, (32, 32), (40, 40),
                               None, 0.0, np.random.default_rng(0))
    for _ in range(20):
        patch, _ = sampler.sample(pair)
        patch.add_(1.0)  # what an in-place augmentation does
    assert np.array_equal(image, original)
