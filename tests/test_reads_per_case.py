"""Each case's proposals are decompressed once per command, and the oracle's true Dice is computed once."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from nnunetv2_rndpo import judges, proposals
from nnunetv2_rndpo.hybrids import HybridCache, HybridSettings, generate_hybrids
from nnunetv2_rndpo.pipeline import JudgeSettings, hidden_true_dice, score_pool
from nnunetv2_rndpo.proposals import ProposalCache


def filled_cache(tmp_path, cases: int = 3) -> ProposalCache:
    rng = np.random.default_rng(0)
    cache = ProposalCache(tmp_path / "proposals", {"seed": 0})
    for i in range(cases):
        masks = (rng.random((4, 10, 10)) < 0.5).astype(np.uint8)
        cache.save_case(f"c{i}", masks, np.zeros((2, 10, 10), np.float16))
    return cache


def counting(cache, monkeypatch) -> list[str]:
    reads: list[str] = []
    original = type(cache)._read_masks
    monkeypatch.setattr(type(cache), "_read_masks", lambda self, c: reads.append(c) or original(self, c))
    return reads


def test_masks_are_read_once_per_case_inside_remembering_and_every_time_outside(tmp_path, monkeypatch):
    cache = filled_cache(tmp_path)
    reads = counting(cache, monkeypatch)
    with cache.remembering():
        for _ in range(3):  # three passes: true Dice, the judge, mining
            first = [cache.masks(c) for c in ("c0", "c1", "c2")]
        assert reads == ["c0", "c1", "c2"]
        with pytest.raises(ValueError, match="read-only"):
            first[0][0, 0, 0] = 1  # every pass sees the same array: none may change it
    cache.masks("c0")
    cache.masks("c0")
    assert reads == ["c0", "c1", "c2", "c0", "c0"]  # the patch sampler's reads are not kept


def test_remembered_masks_stay_within_the_memory_bound(tmp_path, monkeypatch):
    cache = filled_cache(tmp_path)
    monkeypatch.setattr(proposals, "MASK_MEMORY_BYTES", 2 * 4 * 10 * 10)  # two cases' masks
    reads = counting(cache, monkeypatch)
    with cache.remembering():
        for c in ("c0", "c1", "c2", "c1", "c0"):
            cache.masks(c)
    assert reads == ["c0", "c1", "c2", "c0"]  # c0, the least recently read, made room for c2


def test_a_hybrid_cache_remembers_its_masks_too(tmp_path, monkeypatch):
    base = filled_cache(tmp_path)
    pool = SimpleNamespace(case_ids=["c0", "c1", "c2"], source_digest=lambda c: None)
    hybrids = HybridCache(base, HybridSettings(part_voxels=8, min_part_voxels=1, per_case=3))
    generate_hybrids(hybrids, pool, progress=False)
    reads = counting(hybrids, monkeypatch)
    with hybrids.remembering():
        assert np.array_equal(hybrids.masks("c1"), hybrids.masks("c1"))
    assert reads == ["c1"]


def test_the_oracle_reuses_the_true_dice_it_is_given(tmp_path, monkeypatch):
    cache = filled_cache(tmp_path)
    rng = np.random.default_rng(1)
    labels = {c: (rng.random((10, 10)) < 0.5).astype(np.uint8) for c in ("c0", "c1", "c2")}
    base = SimpleNamespace(classes=[1], label_manager=SimpleNamespace(ignore_label=None, has_regions=False))
    pool = SimpleNamespace(case_ids=sorted(labels), has_labels=True, label=labels.__getitem__,
                           source_digest=lambda c: None)
    settings = JudgeSettings("oracle", sigma=0.05, size_bias=0.1, seed=4)
    fresh = score_pool(base, pool, cache, settings, progress=False)
    dice = hidden_true_dice(base, pool, cache)
    calls = []
    original = judges.true_dice
    monkeypatch.setattr(judges, "true_dice", lambda *a, **k: calls.append(1) or original(*a, **k))
    reused = score_pool(base, pool, cache, settings, progress=False, dice=dice)
    assert calls == []
    assert all(np.array_equal(fresh[c], reused[c]) for c in labels)
