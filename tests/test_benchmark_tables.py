"""The committed preference, judge-training and label-budget tables are their scripts' output of the committed JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset", ["hc18", "hippocampus"])
def test_preference_tables_are_generated_from_their_json(dataset):
    saved = json.loads((RESULTS / f"preferences_{dataset}_cpu.json").read_text())
    _, text = _benchmark("headroom").table(dataset, saved["labeled"], saved["per_seed"])
    assert text in (RESULTS / f"preferences_{dataset}_cpu.md").read_text()


@pytest.mark.parametrize("dataset, stem", [("hc18", "judge_training_hc18_cpu"), ("hc18", "judge_profile_hc18_cpu"),
                                           ("hippocampus", "judge_profile_hippocampus_cpu")])
def test_judge_training_tables_are_generated_from_their_json(dataset, stem):
    per_seed = json.loads((RESULTS / f"{stem}.json").read_text())
    text = _benchmark("judge_training_check").table(dataset, per_seed)
    assert text in (RESULTS / f"{stem}.md").read_text()


def test_label_budget_table_is_generated_from_its_json():
    saved = json.loads((RESULTS / "label_budget_hippocampus_cpu.json").read_text())
    text = _benchmark("label_budget").table(saved)
    assert text == (RESULTS / "label_budget_hippocampus_cpu.md").read_text()
    assert "| 3 | 0 |" in text and saved["full_label"]["num_labeled"] == 10


def test_size_free_spearman_credits_what_a_judge_knows_beyond_mask_size():
    check = _benchmark("judge_training_check")
    rng = np.random.default_rng(0)
    sizes = {f"c{i}": rng.integers(100, 200, 8).astype(float) for i in range(6)}
    beyond = {c: rng.normal(size=8) for c in sizes}  # what size does not tell
    dice = {c: 0.01 * sizes[c] + beyond[c] for c in sizes}
    assert check.size_free_spearman(dice, dice, sizes) == pytest.approx(1.0)  # the oracle
    assert check.size_free_spearman({c: beyond[c] for c in sizes}, dice, sizes) > 0.9
    reads_size = {c: 3.0 * sizes[c] + 1.0 for c in sizes}  # perfect on size alone: nothing left to credit
    assert np.isnan(check.size_free_spearman(reads_size, dice, sizes))
    coin = {c: rng.normal(size=8) for c in sizes}
    assert abs(check.size_free_spearman(coin, dice, sizes)) < 0.5
