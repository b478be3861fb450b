"""The committed preference, judge-training and label-budget tables are their scripts' output of the committed JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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


def test_judge_training_table_is_generated_from_its_json():
    per_seed = json.loads((RESULTS / "judge_training_hc18_cpu.json").read_text())
    text = _benchmark("judge_training_check").table("hc18", per_seed)
    assert text in (RESULTS / "judge_training_hc18_cpu.md").read_text()


def test_label_budget_table_is_generated_from_its_json():
    saved = json.loads((RESULTS / "label_budget_hippocampus_cpu.json").read_text())
    text = _benchmark("label_budget").table(saved)
    assert text == (RESULTS / "label_budget_hippocampus_cpu.md").read_text()
    assert "| 3 | 0 |" in text and saved["full_label"]["num_labeled"] == 10
