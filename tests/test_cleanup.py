"""nnUNetv2_rndpo_clean's rules on a hand-made cache layout (fast, no training)."""

import json
import os
import socket
import time

import pytest

from nnunetv2_rndpo.cleanup import clean
from nnunetv2_rndpo.fold_lock import LOCK_FILE

DATASET = "Dataset500_Mine"


def make_cache(root, kind, key, complete=True, age_seconds=0.0):
    folder = root / "preprocessed" / DATASET / "rndpo" / "nnUNetPlans_2d" / kind / key
    folder.mkdir(parents=True)
    (folder / "a.npz").write_bytes(b"x" * 1000)
    if complete:
        (folder / "manifest.json").write_text(json.dumps({"spec": {}, "origin": {"base_checkpoint": f"/m/{key}.pth"}}))
    past = time.time() - age_seconds
    for p in folder.iterdir():
        os.utime(p, (past, past))
    return folder


@pytest.fixture
def layout(tmp_path):
    used = make_cache(tmp_path, "proposals", "used0000")
    unused = make_cache(tmp_path, "proposals", "unused00")
    filling = make_cache(tmp_path, "proposals", "filling0", complete=False)
    abandoned = make_cache(tmp_path, "labeled_proposals", "abandon0", complete=False, age_seconds=7200)
    fold = tmp_path / "results" / DATASET / "nnUNetTrainerRNDPO__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "rndpo_pairs.json").write_text(json.dumps({"pairs": [], "proposals": str(used)}))
    leftover = used.parent.parent / "pool" / ".a_image.npy.123.abcd.tmp"
    leftover.parent.mkdir()
    leftover.write_bytes(b"half")
    os.utime(leftover, (time.time() - 7200,) * 2)
    return tmp_path, used, unused, filling, abandoned, fold, leftover


def test_a_dry_run_lists_and_deletes_nothing(layout):
    root, used, unused, filling, abandoned, fold, leftover = layout
    lines = []
    would = clean(root / "preprocessed", root / "results", DATASET, log=lines.append)
    assert set(would) == {unused, abandoned, leftover}
    text = "\n".join(lines)
    assert f"named by {fold / 'rndpo_pairs.json'}" in text and "a run may be filling it" in text
    assert "from /m/unused00.pth" in text and "Nothing was deleted" in text
    assert all(p.exists() for p in (used, unused, filling, abandoned, leftover))


def test_delete_removes_only_what_nothing_keeps(layout):
    root, used, unused, filling, abandoned, _, leftover = layout
    clean(root / "preprocessed", root / "results", DATASET, delete=True, log=lambda _: None)
    assert used.exists() and filling.exists()
    assert not unused.exists() and not abandoned.exists() and not leftover.exists()


def test_delete_is_refused_while_a_run_holds_a_fold_lock(layout):
    root, _, unused, _, _, fold, _ = layout
    (fold / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
                                              "command": "nnUNetv2_train 500 2d 0 -tr nnUNetTrainerRNDPO"}))
    with pytest.raises(RuntimeError, match="(?s)in progress.*nnUNetv2_train 500 2d 0"):
        clean(root / "preprocessed", root / "results", DATASET, delete=True, log=lambda _: None)
    assert unused.exists()
