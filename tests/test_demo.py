"""The main job: ``nnUNetv2_rndpo_demo --quick`` end to end with nnU-Net's real commands (slower tier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunetv2_rndpo.demo import DemoSettings, demo_environment, run_demo

BIN = Path(sys.executable).parent


@pytest.mark.e2e
def test_quick_demo_writes_a_report_with_the_three_arms(tmp_path):
    report = run_demo(tmp_path / "out", quick=True)
    root = tmp_path / "out"
    text = report.read_text()
    for heading in ("## Test Dice", "## Test Dice over fine-tuning", "## Judge reliability", "## Pairs",
                    "## Test predictions", "## Stage timings"):
        assert heading in text, heading
    table = text.split("## Test Dice over fine-tuning")[0]
    for arm in ("| base |", "| DPO |", "| RN-DPO |"):
        assert arm in table, arm
    for figure in ("dice_curves.png", "pairs.png", "predictions.png"):
        path = root / "figures" / figure
        assert path.is_file() and path.stat().st_size > 5000, figure
        assert f"figures/{figure}" in text
    summary = json.loads((root / "demo_summary.json").read_text())
    assert set(summary["test_dice"]) == {"base", "dpo", "rndpo"}
    for values in summary["test_dice"].values():
        assert set(values) == {"organ", "lesion", "mean"} and 0 <= values["mean"] <= 1
    assert set(summary["curves"]) == {"dpo", "rndpo"}
    # everything nnU-Net wrote is inside OUTDIR
    assert (root / "nnUNet_results" / "Dataset981_Synthetic2D").is_dir()
    # a rerun skips every finished stage and only rewrites the report
    result = subprocess.run([str(BIN / "nnUNetv2_rndpo_demo"), "-o", str(root), "--quick"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done in an earlier run") == 14
    # other settings in the same OUTDIR are refused
    refused = subprocess.run([str(BIN / "nnUNetv2_rndpo_demo"), "-o", str(root)], capture_output=True, text=True)
    assert refused.returncode == 2 and "holds a demo run with other settings" in refused.stderr


def test_demo_environment_stays_inside_outdir(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", "/users/own/raw")
    monkeypatch.setenv("nnUNet_results", "/users/own/results")
    env = demo_environment(tmp_path)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert env[key].startswith(str(tmp_path)), key
    assert Path(env["nnUNet_extTrainer"], "rndpo_trainers.py").is_file()
    assert os.environ["nnUNet_raw"] == "/users/own/raw"


def test_quick_settings_are_smaller():
    full = DemoSettings.create("synthetic", "2d", "cpu", False)
    quick = DemoSettings.create("synthetic", "2d", "cpu", True)
    assert quick.num_epochs < full.num_epochs and quick.num_unlabeled < full.num_unlabeled
    config = full.fine_tuning_config()
    assert config["eval_every"] == 1 and config["base_trainer"] == full.base_trainer
