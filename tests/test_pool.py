"""The unlabeled pool: case discovery with its errors, and atomic file writes (fast, no training)."""

import os
from pathlib import Path

import pytest

from nnunetv2_rndpo.pool import find_cases


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_find_cases_groups_channels_and_labels(tmp_path):
    touch(tmp_path / "img", "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz")
    touch(tmp_path / "lab", "a.nii.gz")
    cases = find_cases(tmp_path / "img", ".nii.gz", 2, tmp_path / "lab")
    assert [c.case_id for c in cases] == ["a", "b"]
    assert cases[0].image_files[1].endswith("a_0001.nii.gz") and cases[0].label_file.endswith("a.nii.gz")
    assert cases[1].label_file is None


@pytest.mark.parametrize(
    "files, channels, error, message",
    [
        (None, 1, FileNotFoundError, "does not exist. Put images there named CASE_0000.nii.gz"),
        ([], 1, FileNotFoundError, "is empty"),
        (["a_0000.png"], 1, ValueError, "do not end in the dataset's file_ending '.nii.gz'"),
        (["a.nii.gz"], 1, ValueError, "not in nnU-Net's naming CASE_XXXX.nii.gz"),
        (["a_0000.nii.gz"], 2, ValueError, "has channels \\[0\\] but dataset.json declares 2 channel"),
    ],
)
def test_find_cases_errors(tmp_path, files, channels, error, message):
    if files is not None:
        touch(tmp_path / "img", *files)
    with pytest.raises(error, match=message):
        find_cases(tmp_path / "img", ".nii.gz", channels)


def test_atomic_writes_use_a_temporary_name_of_their_own_and_leave_nothing_on_failure(tmp_path):
    from nnunetv2_rndpo.atomic_files import atomic_write, atomic_write_text

    atomic_write_text(tmp_path / "a.json", "1")

    def failing(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.json", failing)
    assert (tmp_path / "a.json").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    seen = []
    atomic_write(tmp_path / "b.npy", lambda f: seen.append(Path(f.name).name) or f.write(b"x"))
    assert seen[0].startswith(".b.npy.") and seen[0].endswith(".tmp") and str(os.getpid()) in seen[0]
