"""Hybrids and ``local`` mining: parts of the disagreement region, one-part swaps, their cache, their scores, and
how right an oracle's local pairs are on a case with two touching structures (fast, no nnU-Net)."""

from types import SimpleNamespace

import numpy as np
import pytest

from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.hybrids import (
    HybridCache,
    HybridSettings,
    base_scores,
    disagreement_parts,
    generate_hybrids,
    hamming_medoid,
    hybrid_masks,
    make_hybrids,
)
from nnunetv2_rndpo.judges import agreement_scores, oracle_scores
from nnunetv2_rndpo.mining import MiningParams, candidate_pairs, local_candidates, mine_pairs, mine_pool
from nnunetv2_rndpo.proposals import ProposalCache
from nnunetv2_rndpo.reliability import region_label_accuracy


def touching_structures(num_proposals: int = 6, seed: int = 0, size: int = 32, patches: int = 10):
    """A 3D case whose labels 1 and 2 are boxes that touch, and proposals with independent local boundary errors.

    Each proposal is the truth with ``patches`` balls of radius 4 around boundary voxels where the labels are
    those of the truth shifted by one voxel along a random axis (a local boundary shift). D of two proposals is
    then a thin shell around both structures, one connected component, made of many independent local errors.

    Returns:
        ``(truth (X, Y, Z), proposals (K, X, Y, Z))``, uint8.
    """
    rng = np.random.default_rng(seed)
    truth = np.zeros((size,) * 3, np.uint8)
    truth[6:16, 6:26, 6:26] = 1
    truth[16:26, 6:26, 6:26] = 2
    boundary = np.argwhere(truth != np.roll(truth, 1, axis=0))
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1)
    proposals = []
    for _ in range(num_proposals):
        mask = truth.copy()
        for centre in boundary[rng.choice(len(boundary), patches, replace=False)]:
            ball = np.sum((grid - centre) ** 2, axis=-1) <= 16
            shifted = np.roll(truth, rng.choice([-1, 1]), axis=int(rng.integers(3)))
            mask[ball] = shifted[ball]
        proposals.append(mask)
    return truth, np.stack(proposals)


def test_parts_are_bounded_disjoint_and_cover_the_disagreement_region():
    truth, proposals = touching_structures()
    a, b = proposals[0], proposals[1]
    region = np.flatnonzero(a != b)
    every = disagreement_parts(a, b, part_voxels=20, min_part_voxels=1)
    covered = np.concatenate(every)
    assert len(covered) == len(np.unique(covered)) and set(covered) == set(region)  # a partition of D
    assert all(1 <= len(p) <= 20 for p in every) and [len(p) for p in every] == sorted(map(len, every), reverse=True)
    kept = disagreement_parts(a, b, part_voxels=20, min_part_voxels=8)
    assert all(8 <= len(p) <= 20 for p in kept)
    dropped = {tuple(p) for p in every} - {tuple(p) for p in kept}
    assert all(len(p) < 8 for p in dropped) and len(kept) + len(dropped) == len(every)
    whole = disagreement_parts(a, b, part_voxels=len(region), min_part_voxels=1)
    assert len(whole) < len(every)  # without the size bound a component stays whole


def test_touching_structures_disagree_in_one_component_that_full_connectivity_keeps_together():
    from scipy import ndimage

    # a one-voxel diagonal staircase is one component only with edge/corner neighbours
    a = np.zeros((6, 6), np.uint8)
    b = a.copy()
    for i in range(6):
        b[i, i] = 1
    assert ndimage.label(a != b)[1] == 6
    assert [len(p) for p in disagreement_parts(a, b, part_voxels=6, min_part_voxels=1)] == [6]
    assert [len(p) for p in disagreement_parts(a, b, part_voxels=3, min_part_voxels=1)] == [3, 3]


def test_split_by_change_makes_each_part_one_change_and_still_partitions_d():
    a = np.zeros((8, 12), np.uint8)
    a[2:6, 2:10] = 1
    b = a.copy()
    b[2:6, 10] = 1  # a bulge of b to the right (0 -> 1) ...
    b[2:6, 9] = 2  # ... next to a column b gives to class 2 (1 -> 2): one component of D with both
    assert [len(p) for p in disagreement_parts(a, b, part_voxels=100, min_part_voxels=1)] == [8]
    parts = disagreement_parts(a, b, part_voxels=100, min_part_voxels=1, by_change=True)
    assert [len(p) for p in parts] == [4, 4]
    for part in parts:
        assert len({(int(x), int(y)) for x, y in zip(a.ravel()[part], b.ravel()[part], strict=True)}) == 1
    truth, proposals = touching_structures()
    split = disagreement_parts(proposals[0], proposals[1], part_voxels=20, min_part_voxels=1, by_change=True)
    covered = np.concatenate(split)
    assert len(covered) == len(np.unique(covered)) and set(covered) == set(np.flatnonzero(proposals[0] != proposals[1]))
    assert all(len(p) <= 20 for p in split)


def test_a_hybrid_is_its_anchor_with_one_part_from_its_donor():
    _, proposals = touching_structures()
    settings = HybridSettings(part_voxels=16, min_part_voxels=4, per_case=12)
    hybrids = make_hybrids(proposals, settings)
    masks = hybrid_masks(proposals, hybrids)
    assert masks.shape == (12, *proposals.shape[1:]) and masks.dtype == proposals.dtype == np.uint8
    anchor = hamming_medoid(proposals)
    assert set(hybrids.anchors.tolist()) == {anchor} and anchor not in hybrids.donors
    for mask, donor, part in zip(masks, hybrids.donors, hybrids.parts, strict=True):
        assert np.array_equal(np.flatnonzero(mask != proposals[anchor]), part)  # differs exactly on the part
        assert np.array_equal(mask.ravel()[part], proposals[donor].ravel()[part])  # where it takes the donor's labels
        assert 4 <= len(part) <= 16
    sizes = [len(p) for p in hybrids.parts]
    assert sizes == sorted(sizes, reverse=True)  # the largest parts first
    assert len({m.tobytes() for m in masks}) == len(masks)  # no hybrid twice


def test_hybrids_are_deterministic_and_need_no_seed():
    _, proposals = touching_structures()
    settings = HybridSettings(16, 4, 8)
    first = make_hybrids(proposals, settings)
    np.random.seed(1)  # the global generator plays no part
    second = make_hybrids(proposals, settings)
    assert np.array_equal(first.donors, second.donors)
    assert all(np.array_equal(p, q) for p, q in zip(first.parts, second.parts, strict=True))


def test_medoid_is_the_mask_closest_to_the_others():
    masks = np.zeros((3, 10), np.uint8)
    masks[1, :3] = 1
    masks[2, :5] = 1  # distances: 0–1: 3, 0–2: 5, 1–2: 2
    assert hamming_medoid(masks) == 1


def _stored_case(tmp_path, proposals, settings, spec=None):
    cache = ProposalCache(tmp_path / "proposals", spec or {"weights": "x", "seed": 1})
    cache.save_case("c", proposals, np.zeros((3, *proposals.shape[1:]), np.float16), source="v1")
    cache.mark_complete(["c"])
    pool = SimpleNamespace(case_ids=["c"], source_digest=lambda case: "v1")
    hybrids = HybridCache(cache, settings)
    return cache, pool, hybrids


def test_hybrid_cache_stores_beside_the_proposals_and_is_keyed_by_the_settings(tmp_path):
    _, proposals = touching_structures()
    settings = HybridSettings(16, 4, 6)
    cache, pool, hybrids = _stored_case(tmp_path, proposals, settings)
    assert hybrids.folder.parent == cache.folder and not hybrids.has_case("c", "v1")
    assert generate_hybrids(hybrids, pool, progress=False) == 1 and hybrids.is_complete
    assert generate_hybrids(hybrids, pool, progress=False) == 0  # cached
    masks = hybrids.masks("c")
    assert masks.shape == (len(proposals) + 6, *proposals.shape[1:]) and masks.dtype == np.uint8
    assert np.array_equal(masks[:len(proposals)], proposals) and hybrids.num_base("c") == len(proposals)
    assert np.array_equal(masks[len(proposals):], hybrid_masks(proposals, make_hybrids(proposals, settings)))
    assert hybrids.has_case("c", "v1") and not hybrids.has_case("c", "v2")  # a replaced image: made again
    keys = {HybridCache(cache, s).folder for s in (settings, HybridSettings(8, 4, 6), HybridSettings(16, 2, 6),
                                                   HybridSettings(16, 4, 3), HybridSettings(16, 4, 6, True))}
    other_base = ProposalCache(tmp_path / "proposals", {"weights": "y", "seed": 1})
    assert len(keys) == 5 and HybridCache(other_base, settings).folder not in keys


def test_settings_come_from_the_config_only_for_local_mining():
    assert HybridSettings.from_config(RNDPOConfig()) is None
    config = RNDPOConfig(mining="local", local_part_voxels=32, local_min_part_voxels=5, mining_max_pairs_per_case=7)
    assert HybridSettings.from_config(config) == HybridSettings(32, 5, 7)
    config = RNDPOConfig(mining="local", local_split_by_change=True)
    assert HybridSettings.from_config(config).by_change
    with pytest.raises(ValueError, match="local_part_voxels"):
        RNDPOConfig(local_part_voxels=4, local_min_part_voxels=10)
    with pytest.raises(ValueError, match="local_min_part_voxels"):
        HybridSettings(8, 0, 1)


def test_local_candidates_pair_each_hybrid_with_its_anchor_by_score():
    scores = np.array([0.5, 0.9, 0.3, 0.6, 0.2, 0.3])  # K = 3 base, hybrids 3, 4, 5 of anchors 1, 1, 2
    assert local_candidates(scores, np.array([1, 1, 2])) == [(1, 3), (1, 4), (2, 5)]
    assert local_candidates(np.array([0.5, 0.1, 0.3, 0.6]), np.array([0, 0])) == [(0, 2), (3, 0)]
    with pytest.raises(ValueError, match="hybrids"):
        candidate_pairs(scores, "local", np.random.default_rng(0))
    masks = np.zeros((6, 4), np.uint8)
    with pytest.raises(ValueError, match="--hybrids"):
        mine_pairs("c", masks, scores, MiningParams("local"), np.random.default_rng(0))


def test_other_strategies_never_pair_a_hybrid():
    masks = np.arange(6, dtype=np.uint8)[:, None].repeat(4, 1)
    scores = np.array([0.5, 0.9, 0.3, 1.0, 0.0, 0.3])
    pairs = mine_pairs("c", masks, scores, MiningParams("margin", tau=0, max_pairs_per_case=20),
                       np.random.default_rng(0), hybrid_anchors=np.array([1, 1, 2]))
    assert pairs and all(p.chosen < 3 and p.rejected < 3 for p in pairs)


def test_agreement_compares_hybrids_with_the_base_proposals_only():
    _, proposals = touching_structures(num_proposals=4)
    hybrids = make_hybrids(proposals, HybridSettings(16, 4, 5))
    masks = np.concatenate([proposals, hybrid_masks(proposals, hybrids)])
    scores = agreement_scores(masks, [1, 2], num_references=4)
    assert np.allclose(scores[:4], agreement_scores(proposals, [1, 2]))  # the base proposals' scores unchanged
    # a hybrid identical to a base proposal would score exactly like it
    twin = agreement_scores(np.concatenate([proposals, proposals[:1]]), [1, 2], num_references=4)
    assert twin[4] == pytest.approx(twin[0])
    assert base_scores(SimpleNamespace(), {"c": scores}) == {"c": scores}


@pytest.mark.parametrize("by_change", [False, True])
def test_oracle_local_pairs_are_right_where_decidable_and_beat_whole_mask_pairs(tmp_path, by_change):
    """Two touching structures: a whole-mask verdict is right on part of D only; a one-part verdict on ≥ 90%."""
    truth, proposals = touching_structures(num_proposals=6, seed=3)
    settings = HybridSettings(part_voxels=16, min_part_voxels=4, per_case=40, by_change=by_change)
    _, pool, hybrids = _stored_case(tmp_path, proposals, settings)
    generate_hybrids(hybrids, pool, progress=False)
    pool.label = lambda case: truth
    masks = hybrids.masks("c")
    scores, dice = oracle_scores(masks, truth, [1, 2], 0.0, np.random.default_rng(0))
    local, stats = mine_pool(hybrids, ["c"], {"c": scores}, MiningParams("local", max_pairs_per_case=40), 0,
                             {"c": dice})
    assert len(local) >= 20 and stats["pairs/oracle_acc"] == 1.0
    assert all(p.region_size <= 16 for p in local) and {p.chosen for p in local} | {p.rejected for p in local} > {
        hamming_medoid(proposals)}
    whole, _ = mine_pool(hybrids, ["c"], {"c": scores}, MiningParams("top_bottom"), 0, {"c": dice})
    local_right = region_label_accuracy(local, hybrids, pool)
    whole_right = region_label_accuracy(whole, hybrids, pool)
    assert local_right["pairs/chosen_right_where_decidable"] >= 0.9
    assert whole_right["pairs/chosen_right_where_decidable"] < 0.8
    assert local_right["pairs/chosen_right_in_region"] > whole_right["pairs/chosen_right_in_region"] + 0.1


@pytest.mark.parametrize("judge", ["agreement", "uncertainty", "learned", "oracle", "external"])
def test_every_judge_scores_the_hybrids_as_proposals(tmp_path, judge):
    import torch

    from nnunetv2_rndpo.judges import write_scores_csv
    from nnunetv2_rndpo.learned_judge import LearnedJudge, RankingNet
    from nnunetv2_rndpo.pipeline import JudgeSettings, score_pool

    truth, proposals = touching_structures(num_proposals=4)
    _, pool, hybrids = _stored_case(tmp_path, proposals, HybridSettings(16, 4, 5))
    generate_hybrids(hybrids, pool, progress=False)
    pool.has_labels, pool.label, pool.image = True, lambda case: truth, lambda case: truth[None].astype(np.float32)
    base = SimpleNamespace(classes=[1, 2], label_manager=SimpleNamespace(has_regions=False, ignore_label=None),
                           device=torch.device("cpu"))
    settings = JudgeSettings(judge)
    if judge == "learned":
        path = tmp_path / "judge.pth"
        LearnedJudge(RankingNet(1 + 2 * 2, 3, 4), [1, 2], 1 + 2 * 2, 3, (8, 8, 8), 4, {}).save(path)
        settings = JudgeSettings(judge, learned_judge=str(path))
    if judge == "external":
        write_scores_csv(tmp_path / "qc.csv", {"c": np.arange(9.0)})
        settings = JudgeSettings(judge, scores_file=str(tmp_path / "qc.csv"))
    scores = score_pool(base, pool, hybrids, settings, progress=False)
    assert scores["c"].shape == (4 + 5,) and np.isfinite(scores["c"]).all()
    if judge == "external":  # a CSV that scores the 4 proposals only is rejected, naming the hybrids' indices
        write_scores_csv(tmp_path / "qc.csv", {"c": np.arange(4.0)})
        with pytest.raises(ValueError, match=r"no score for proposal\(s\) \[4, 5, 6, 7, 8\]"):
            score_pool(base, pool, hybrids, settings, progress=False)
