"""Study-dataset import (MSD layout, 2D PNG folders), group-aware splits, and the synthetic generator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunetv2_rndpo.commands import main_make_dataset as main
from nnunetv2_rndpo.datasets import (
    group_function,
    make_dataset,
    png_label_mapping,
    read_manifest,
    split_by_group,
)
from nnunetv2_rndpo.synthetic import make_synthetic_dataset, make_tiny_dataset, synthetic_case


def make_msd(root: Path, num_cases: int = 8) -> Path:
    """A tiny MSD-layout folder: imagesTr/case_XXX.nii.gz + labelsTr (labels 0, 1, 2) and a macOS '._' file."""
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for i in range(num_cases):
        label = np.zeros((6, 8, 8), np.uint8)
        label[2:4, 2:5, 2:5] = 1
        label[2:4, 5:7, 2:5] = 2
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(6, 8, 8)).astype(np.float32)),
                        str(root / "imagesTr" / f"case_{i:03d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"mac metadata")
    return root


def make_png_folder(root: Path) -> Path:
    """HC18-like: images/EXAM_kHC.png (exams with 1–3 images) + masks_filled/NAME_Annotation.png, 0/255 masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks_filled").mkdir()
    rng = np.random.default_rng(1)
    for exam in range(10):
        for k in range(1 + exam % 3):
            name = f"{exam:03d}_{k + 1 if k else ''}HC"
            mask = np.zeros((20, 30), np.uint8)
            mask[5:15, 8:20] = 255
            Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(root / "images" / f"{name}.png")
            Image.fromarray(mask).save(root / "masks_filled" / f"{name}_Annotation.png")
    return root


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "rndpo_splits.json"}


def split_cases_on_disk(folder: Path, ending: str) -> dict[str, set[str]]:
    return {split: {p.name.removesuffix(f"_0000{ending}") for p in (folder / f"images{split}").glob(f"*{ending}")}
            for split in ("Tr", "Unlabeled", "Ts")}


def test_msd_import_writes_every_split_with_labels(tmp_path):
    source = make_msd(tmp_path / "Task99_Tiny")
    folder = make_dataset(source, tmp_path / "raw", 42, "Tiny", num_labeled=3, num_test=2, seed=5)
    assert folder == tmp_path / "raw" / "Dataset042_Tiny"
    on_disk = split_cases_on_disk(folder, ".nii.gz")
    assert [len(on_disk[s]) for s in ("Tr", "Unlabeled", "Ts")] == [3, 3, 2]
    assert set.union(*on_disk.values()) == {f"case_{i:03d}" for i in range(8)}  # the '._' file is skipped
    for split, cases in on_disk.items():
        for case in cases:
            assert (folder / f"labels{split}" / f"{case}.nii.gz").is_file()
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert dataset_json["numTraining"] == 3 and dataset_json["file_ending"] == ".nii.gz"
    manifest = read_manifest(folder)
    assert set(manifest["splits"]["labeled"]) == on_disk["Tr"] and manifest["seed"] == 5


def test_png_import_is_group_aware_resized_and_maps_255_to_1(tmp_path):
    source = make_png_folder(tmp_path / "hc")
    folder = make_dataset(source, tmp_path / "raw", 7, "HC", num_labeled=4, num_test=4, seed=3,
                          group_chars=3, resize=(10, 16))
    manifest = read_manifest(folder)
    group_of_split = {}
    for split in ("labeled", "unlabeled", "test"):
        for case in manifest["splits"][split]:
            assert group_of_split.setdefault(case[:3], split) == split, f"exam {case[:3]} straddles splits"
    assert len(manifest["splits"]["labeled"]) <= 4 and len(manifest["splits"]["test"]) <= 4
    image = np.asarray(Image.open(next((folder / "imagesTr").glob("*.png"))))
    label = np.asarray(Image.open(next((folder / "labelsTr").glob("*.png"))))
    assert image.shape == label.shape == (10, 16)
    assert set(np.unique(label)) == {0, 1}
    assert manifest["label_mapping"] == {"0": 0, "255": 1}
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "foreground": 1}


def test_group_regex_keeps_exams_together():
    group = group_function(group_regex=r"^(\d{3})_")
    cases = {name: group(name) for name in ("001_HC", "001_2HC", "002_HC", "003_HC", "003_2HC", "003_3HC", "004_HC")}
    for seed in range(20):
        splits = split_by_group(cases, num_labeled=2, num_test=2, seed=seed)
        where = {}
        for split, members in splits.items():
            for case in members:
                assert where.setdefault(cases[case], split) == split
        assert sum(len(v) for v in splits.values()) == len(cases)


def test_split_is_seeded():
    cases = {f"c{i}": f"c{i}" for i in range(20)}
    assert split_by_group(cases, 5, 5, seed=1) == split_by_group(cases, 5, 5, seed=1)
    assert split_by_group(cases, 5, 5, seed=1) != split_by_group(cases, 5, 5, seed=2)
    capped = split_by_group(cases, 5, 5, seed=1, num_unlabeled=4)
    assert len(capped["unlabeled"]) == 4 and len(capped["unused"]) == 6


def test_refuses_to_overwrite_unless_asked(tmp_path):
    source = make_msd(tmp_path / "src")
    make_dataset(source, tmp_path / "raw", 42, "Tiny", 3, 2)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_dataset(source, tmp_path / "raw", 42, "Other", 3, 2)
    make_dataset(source, tmp_path / "raw", 42, "Other", 3, 2, overwrite=True)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset042_Other"]


@pytest.mark.parametrize("call, message", [
    (lambda src, raw: make_dataset(src / "missing", raw, 1, "X", 3, 2), "is not a folder"),
    (lambda src, raw: make_dataset(src, raw, 1, "X", 5, 3), "leaves no unlabeled case"),
    (lambda src, raw: make_dataset(src, raw, 1000, "X", 3, 2), "dataset id in 1"),
    (lambda src, raw: make_dataset(src, raw, 1, "bad name", 3, 2), "-n must be a name"),
    (lambda src, raw: make_dataset(src, raw, 1, "X", 3, 2, group_regex="(x"), "not a valid regular expression"),
    (lambda src, raw: make_dataset(src, raw, 1, "X", 3, 2, group_regex="^zzz"), "does not match the case name"),
    (lambda src, raw: make_dataset(src, raw, 1, "X", 3, 2, resize=(4, 4)), "--resize is for 2D PNG"),
])
def test_clear_errors(tmp_path, call, message):
    source = make_msd(tmp_path / "src")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        call(source, tmp_path / "raw")


def test_missing_label_and_mask_are_named(tmp_path):
    source = make_msd(tmp_path / "src")
    (source / "labelsTr" / "case_003.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case_003.nii.gz has no label"):
        make_dataset(source, tmp_path / "raw", 1, "X", 3, 2)
    png = make_png_folder(tmp_path / "png")
    (png / "masks_filled" / "002_HC_Annotation.png").unlink()
    with pytest.raises(FileNotFoundError, match="002_HC.png has no mask"):
        make_dataset(png, tmp_path / "raw", 2, "Y", 3, 2)


def test_png_label_mapping():
    assert png_label_mapping([0, 255]) == {0: 0, 255: 1}
    assert png_label_mapping([0, 1, 2]) == {0: 0, 1: 1, 2: 2}
    with pytest.raises(ValueError, match="no background 0"):
        png_label_mapping([1, 255])


def test_command_line(tmp_path, capsys):
    source = make_png_folder(tmp_path / "png")
    main(["-i", str(source), "-d", "5", "-o", str(tmp_path / "raw"), "--labeled", "3", "--test", "3",
          "--group-regex", r"^(\d+)_", "--resize", "12", "12"])
    assert "Dataset005_png" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["-i", str(source), "-d", "5", "-o", str(tmp_path / "raw"), "--labeled", "3", "--test", "3"])
    assert "already exists" in capsys.readouterr().err


def test_synthetic_is_deterministic_and_seed_dependent(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", 981, dim=2, num_labeled=2, num_unlabeled=2, num_test=2, seed=4)
    b = make_synthetic_dataset(tmp_path / "b", 981, dim=2, num_labeled=2, num_unlabeled=2, num_test=2, seed=4)
    c = make_synthetic_dataset(tmp_path / "c", 981, dim=2, num_labeled=2, num_unlabeled=2, num_test=2, seed=5)
    assert digest(a) == digest(b)
    assert digest(a).keys() == digest(c).keys() and digest(a) != digest(c)
    assert read_manifest(a)["splits"] == read_manifest(c)["splits"]


@pytest.mark.parametrize("dim, shape", [(2, (64, 64)), (3, (24, 40, 40))])
def test_synthetic_case_has_two_touching_structures_and_a_distractor(dim, shape):
    for seed in range(5):
        image, label = synthetic_case(shape, np.random.default_rng(seed))
        assert image.shape == label.shape == shape
        assert set(np.unique(label)) == {0, 1, 2}
        lesion = label == 2
        grown = lesion.copy()
        for axis in range(dim):  # one-voxel dilation: the lesion touches the organ
            grown |= np.roll(lesion, 1, axis) | np.roll(lesion, -1, axis)
        assert (grown & (label == 1)).any()
        # low contrast: the organ is brighter than the background by at most 2.5σ of the noise (σ = 16)
        assert 0 < image[label == 1].mean() - image[label == 0].mean() < 40


def test_synthetic_3d_writes_nifti(tmp_path):
    folder = make_synthetic_dataset(tmp_path, 982, dim=3, num_labeled=1, num_unlabeled=1, num_test=1)
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert sitk.ReadImage(str(next((folder / "imagesTs").glob("*.nii.gz")))).GetSize() == (40, 40, 24)


def test_tiny_dataset_has_8_training_and_6_unlabeled_cases_and_can_be_rewritten(tmp_path):
    folder = make_tiny_dataset(tmp_path, 991, dim=2)
    assert split_cases_on_disk(folder, ".png")["Tr"] == {f"tiny_{i:03d}" for i in range(8)}
    assert len(list((folder / "labelsUnlabeled").glob("*.png"))) == 6
    make_tiny_dataset(tmp_path, 991, dim=2)  # tests call it again on the same folder


def test_msd_dataset_json_names_labels_and_channel(tmp_path):
    source = make_msd(tmp_path / "src")
    (source / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"},
                                                     "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    folder = make_dataset(source, tmp_path / "raw", 4, "Hippo", 3, 2)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert dataset_json["channel_names"] == {"0": "CT"}


def test_test_seed_fixes_the_test_set_across_seeds(tmp_path):
    cases = {f"c{i:02d}": f"c{i:02d}" for i in range(30)}
    a = split_by_group(cases, 5, 6, seed=1, test_seed=0)
    b = split_by_group(cases, 5, 6, seed=2, test_seed=0)
    assert a["test"] == b["test"] and a["labeled"] != b["labeled"]
    s1 = make_synthetic_dataset(tmp_path / "s1", 980, num_labeled=2, num_unlabeled=2, num_test=2, seed=1, test_seed=0)
    s2 = make_synthetic_dataset(tmp_path / "s2", 980, num_labeled=2, num_unlabeled=2, num_test=2, seed=2, test_seed=0)
    tests = {k: v for k, v in digest(s1).items() if "Ts" in k}
    assert tests == {k: v for k, v in digest(s2).items() if "Ts" in k}
    assert {k: v for k, v in digest(s1).items() if "Tr/" in k} != {k: v for k, v in digest(s2).items() if "Tr/" in k}


def test_study_runner_flags(tmp_path):
    """The flags nnUNetv2_rndpo_study passes: --masks, --pool, --resize F, --test-seed."""
    source = make_png_folder(tmp_path / "hc")
    main(["-i", str(source), "-d", "9", "-n", "HC", "-o", str(tmp_path / "raw"), "--labeled", "3", "--test", "3",
          "--masks", "masks_filled", "--group-regex", r"^(\d+)_", "--resize", "0.5", "--pool", "4", "--test-seed", "0"])
    folder = tmp_path / "raw" / "Dataset009_HC"
    manifest = read_manifest(folder)
    assert len(manifest["splits"]["unlabeled"]) <= 4 and manifest["test_seed"] == 0 and manifest["resize"] == 0.5
    assert np.asarray(Image.open(next((folder / "imagesTr").glob("*.png")))).shape == (10, 15)
    with pytest.raises(SystemExit):
        main(["-i", str(source), "-d", "10", "-o", str(tmp_path / "raw"), "--labeled", "3", "--test", "3",
              "--resize", "1", "2", "3"])


def test_validation_cases_come_out_of_the_pool_and_leave_the_other_splits_as_they_were(tmp_path):
    cases = {f"c{i:02d}": f"c{i:02d}" for i in range(40)}
    before = split_by_group(cases, 5, 6, seed=3, num_unlabeled=10, test_seed=0)
    after = split_by_group(cases, 5, 6, seed=3, num_unlabeled=10, test_seed=0, num_validation=4)
    assert "validation" not in before and len(after["validation"]) == 4
    assert after["labeled"] == before["labeled"] and after["test"] == before["test"]  # the base model's cases
    assert len(after["unlabeled"]) == 10
    named = [c for split in ("labeled", "validation", "unlabeled", "test") for c in after[split]]
    assert len(named) == len(set(named))  # never mined, never tested
    assert split_by_group(cases, 5, 6, seed=3, num_validation=0) == split_by_group(cases, 5, 6, seed=3)
    with pytest.raises(ValueError, match="--validation 30 leaves no unlabeled case"):
        split_by_group(cases, 5, 6, seed=3, num_validation=30)
    source = make_msd(tmp_path / "Task99_Tiny", num_cases=10)
    folder = make_dataset(source, tmp_path / "raw", 42, "Tiny", num_labeled=3, num_test=2, seed=5, num_validation=2)
    val = {p.name for p in (folder / "imagesVal").glob("*.nii.gz")}
    assert len(val) == 2 and {p.name.replace("_0000", "") for p in (folder / "imagesVal").iterdir()} == \
        {p.name for p in (folder / "labelsVal").iterdir()}
    assert not val & {p.name for p in (folder / "imagesUnlabeled").iterdir()}
    plain = make_dataset(source, tmp_path / "raw", 43, "Tiny", num_labeled=3, num_test=2, seed=5)
    assert not (plain / "imagesVal").exists()  # a dataset without validation cases has no empty folders
    synthetic = make_synthetic_dataset(tmp_path / "s", 980, num_labeled=2, num_unlabeled=3, num_test=2,
                                       num_validation=2)
    assert len(list((synthetic / "labelsVal").iterdir())) == 2
    assert {k: v for k, v in digest(synthetic).items() if "Val" not in k} == \
        digest(make_synthetic_dataset(tmp_path / "t", 980, num_labeled=2, num_unlabeled=3, num_test=2))
