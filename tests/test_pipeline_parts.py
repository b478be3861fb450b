"""Pool discovery, proposal planning, judges, external scores, mining and patch boxes (fast, no training)."""

import os
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_rndpo.judges import agreement_scores, oracle_scores, read_external_scores, write_scores_csv
from nnunetv2_rndpo.mining import MiningParams, mine_pairs
from nnunetv2_rndpo.pool import find_cases
from nnunetv2_rndpo.proposals import plan_proposals
from nnunetv2_rndpo.sampling import patch_bbox

# ---------------------------------------------------------------- pool


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


# ---------------------------------------------------------------- proposals


def test_plan_proposals_spreads_over_sources_reproducibly():
    specs = plan_proposals(8, ["mirror", "threshold"], (0, 1, 2), seed=1)
    assert [s.source for s in specs].count("mirror") == 4 and len(set(specs)) == 8
    assert specs == plan_proposals(8, ["mirror", "threshold"], (0, 1, 2), seed=1)
    assert len([s for s in plan_proposals(8, ["mirror"], (0, 1, 2), 0)]) == 8  # all flips
    assert [s.source for s in plan_proposals(6, ["mirror", "threshold"], (0, 1), 0)].count("mirror") == 3


def test_plan_proposals_too_many():
    with pytest.raises(ValueError, match="give at most 4 distinct proposals here"):
        plan_proposals(5, ["mirror"], (0, 1), 0)


# ---------------------------------------------------------------- judges


def test_agreement_prefers_the_consensus():
    base = np.zeros((8, 8), np.uint8)
    base[2:6, 2:6] = 1
    outlier = np.zeros_like(base)
    outlier[0:2, 0:8] = 1
    scores = agreement_scores(np.stack([base, base, outlier]), [1])
    assert scores[0] == scores[1] > scores[2]


def test_oracle_noise_is_seeded():
    masks = np.stack([np.eye(4, dtype=np.uint8), np.ones((4, 4), np.uint8)])
    label = np.eye(4, dtype=np.uint8)
    clean, true_dice = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0))
    assert clean.tolist() == true_dice.tolist() and true_dice[0] == 1.0
    a, _ = oracle_scores(masks, label, [1], 0.5, np.random.default_rng(3))
    b, _ = oracle_scores(masks, label, [1], 0.5, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and a.tolist() != clean.tolist()


def test_external_scores_round_trip(tmp_path):
    scores = {"a": np.array([0.1, 0.9]), "b": np.array([0.5, 0.2])}
    write_scores_csv(tmp_path / "s.csv", scores)
    read = read_external_scores(tmp_path / "s.csv", {"a": 2, "b": 2})
    assert {k: v.tolist() for k, v in read.items()} == {k: v.tolist() for k, v in scores.items()}


GOOD = "case_id,proposal,score\na,0,0.1\na,1,0.2\nb,0,0.3\nb,1,0.4\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("case,proposal,score\na,0,1\n", "has header 'case,proposal,score'; expected exactly 'case_id,proposal,score'"),
        (GOOD + "c,0,0.5\n", "line 6: unknown case 'c'"),
        (GOOD + "a,2,0.5\n", "line 6: unknown proposal index 2 for case 'a'; valid: 0 ... 1"),
        (GOOD + "a,x,0.5\n", "line 6: proposal 'x' is not an integer index"),
        (GOOD.replace("0.4", "nan"), "line 5: score 'nan' is not finite"),
        (GOOD.replace("0.4", "inf"), "line 5: score 'inf' is not finite"),
        (GOOD.replace("0.4", "good"), "line 5: score 'good' is not a number"),
        (GOOD + "a,1,0.3\n", "line 6: duplicate row for case 'a' proposal 1"),
        ("case_id,proposal,score\na,0,0.1\na,1,0.2\n", "no scores for 1 pool case\\(s\\): \\['b'\\]"),
        ("case_id,proposal,score\na,0,0.1\nb,0,0.3\nb,1,0.4\n", "case 'a' has no score for proposal\\(s\\) \\[1\\]"),
        ("case_id,proposal,score\na,0\n", "expected 3 columns"),
    ],
)
def test_external_scores_errors(tmp_path, text, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        read_external_scores(path, {"a": 2, "b": 2})
    assert path.read_bytes() == before


def test_external_scores_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="judge_scores file .* does not exist"):
        read_external_scores(tmp_path / "nope.csv", {"a": 2})


# ---------------------------------------------------------------- mining


def test_mining_top_bottom_and_top_random():
    masks = np.stack([np.full((3, 3), k % 2, np.uint8) for k in range(4)])
    scores = np.array([0.2, 0.9, 0.1, 0.5])
    (pair,) = mine_pairs("c", masks, scores, MiningParams("top_bottom"), np.random.default_rng(0),
                         true_dice=np.array([1, 2, 3, 4.0]))
    assert (pair.chosen, pair.rejected, pair.region_size) == (1, 2, 9)
    assert (pair.chosen_dice, pair.rejected_dice) == (2.0, 3.0)
    partners = {p.rejected for s in range(20)
                for p in mine_pairs("c", masks, scores, MiningParams("top_random"), np.random.default_rng(s))}
    assert 1 not in partners and partners >= {0, 2}


def test_identical_masks_give_no_pair():
    masks = np.zeros((3, 4, 4), np.uint8)
    assert mine_pairs("c", masks, np.array([0.1, 0.5, 0.3]), MiningParams("top_bottom"), np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="unknown mining 'best'"):
        mine_pairs("c", masks, np.array([0.1, 0.5, 0.3]), MiningParams("best"), np.random.default_rng(0))


# ---------------------------------------------------------------- patch boxes


def test_patch_bbox_centres_on_the_voxel_and_stays_in_nnunet_bounds():
    rng = np.random.default_rng(0)
    box = patch_bbox((40, 40), (20, 20), (16, 16), (30, 10), rng)
    assert box == [[20, 40], [0, 20]]
    for _ in range(200):
        box = patch_bbox((10, 40), (20, 20), (16, 16), None, rng)
        assert -5 <= box[0][0] <= -5 and -2 <= box[1][0] <= 22


def test_proposal_cache_is_keyed_by_spec_and_complete_only_after_manifest(tmp_path):
    from nnunetv2_rndpo.proposals import ProposalCache

    spec = {"proposals": [{"source": "mirror", "parameter": (0, 1)}], "seed": 1}
    cache = ProposalCache(tmp_path, spec)
    cache.save_case("a", np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.float16))
    assert cache.has_case("a") and not cache.is_complete  # interrupted before the manifest: not valid
    cache.mark_complete(["a"])
    assert ProposalCache(tmp_path, spec).is_complete  # a new run with the same spec reuses it
    other = ProposalCache(tmp_path, {**spec, "seed": 2})
    assert other.folder != cache.folder and not other.is_complete
    other.save_case("a", np.ones((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.float16))
    other.mark_complete(["a"])
    assert cache.is_complete and other.is_complete  # caches of other settings (folds, base models) coexist
    assert cache.masks("a").sum() == 0 and other.masks("a").sum() == 18


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
