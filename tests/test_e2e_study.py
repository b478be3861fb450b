"""``nnUNetv2_rndpo_study`` end to end on the synthetic dataset at smoke scale (slower tier): real
``nnUNetv2_*`` commands for the dataset, base, proposals, judge, two arms and the full-label model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnunetv2_rndpo.study import Study
from nnunetv2_rndpo.study_protocol import SCALES

ARMS = ["control (continued supervised)", "RN-DPO | oracle | top_bottom"]


@pytest.mark.e2e
def test_study_runs_arms_writes_report_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    Study("synthetic", None, "smoke", out, only_arms=ARMS).run()
    results = json.loads((out / "results.json").read_text())
    arms = results["seeds"]["0"]["arms"]
    assert list(arms) == ARMS
    epochs = SCALES["smoke"].num_epochs
    raw = next((out / "nnUNet_raw").glob("Dataset980_*"))
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    test_cases = sorted(f.name[:-len(ending)] for f in (raw / "labelsTs").glob(f"*{ending}"))
    assert len(test_cases) == 6
    for arm in arms.values():
        assert len(arm["curve"]) == epochs + 1 and all(0 <= d <= 1 for d in arm["curve"])
        assert arm["iterations"] == [i * SCALES["smoke"].iterations_per_epoch for i in range(epochs + 1)]
        # the Dice of every test case at every point of the curve, whose mean is the curve
        assert len(arm["curve_per_case"]) == len(arm["curve"])
        for row, dice in zip(arm["curve_per_case"], arm["curve"], strict=True):
            assert sorted(row) == test_cases and np.nanmean(list(row.values())) == pytest.approx(dice, abs=1e-9)
    # both arms start from the same base checkpoint: the same Dice before fine-tuning
    assert arms[ARMS[0]]["curve"][0] == pytest.approx(arms[ARMS[1]]["curve"][0], abs=1e-6)
    assert arms[ARMS[1]]["pairs"] > 0
    # ... measured once: the second arm reads it from the cache; nnU-Net's final validation is skipped
    logs = {name: next((out / "seed_0" / "runs" / "".join(c if c.isalnum() else "_" for c in name)).glob(
        f"nnUNet_results/*/{arm['trainer']}__*/fold_all/training_log_*.txt")).read_text() for name, arm in arms.items()}
    assert "measured before" not in logs[ARMS[0]] and "measured before" in logs[ARMS[1]]
    assert all("final validation skipped" in log for log in logs.values())
    assert results["seeds"]["0"]["splits"]["test"] == 6
    assert results["seeds"]["0"]["judges"]["oracle"]["pairwise/accuracy"] == pytest.approx(1.0)
    assert "pairwise/accuracy" in results["seeds"]["0"]["judges"]["uncertainty"]  # reported without arms
    assert 0 < results["full_label"]["dice"] <= 1
    report = (out / "report.md").read_text()
    assert "| RN-DPO | oracle | top_bottom |" in report and "![synthetic, judge oracle]" in report
    assert "| uncertainty |" in report
    assert "Paired comparisons, judge oracle" in report
    paired = [line for line in report.splitlines() if line.startswith("| RN-DPO, top_bottom | control")]
    assert len(paired) == 3 and all("| [" in line and "/1 |" in line for line in paired)  # an interval, one seed
    assert (out / "figures" / "synthetic_oracle.png").stat().st_size > 5000

    capsys.readouterr()
    Study("synthetic", None, "smoke", out, only_arms=ARMS).run()  # a rerun trains nothing again
    printed = capsys.readouterr().out
    assert "nnUNetv2_train" not in printed and "nnUNetv2_plan_and_preprocess" not in printed
    assert json.loads((out / "results.json").read_text())["seeds"]["0"]["arms"] == arms


@pytest.mark.e2e
def test_second_round_tunes_beta_and_learning_rate_on_validation_cases(tmp_path):
    """smoke2: the dataset holds validation cases out of the pool; the tuning arms measure a validation curve;
    the other DPO-family arms run at the setting with the best validation sustained Dice."""
    from nnunetv2_rndpo.study_protocol import tuning_arms

    tuned = ["RN-DPO | oracle | top_bottom", "DPO | oracle | top_random"]
    out = tmp_path / "study"
    Study("synthetic", None, "smoke2", out, only_arms=[a.name for a in tuning_arms()] + tuned).run()
    seed = json.loads((out / "results.json").read_text())["seeds"]["0"]
    raw = next((out / "nnUNet_raw").glob("Dataset980_*"))
    validation = sorted(p.name[:-len(".png")] for p in (raw / "labelsVal").glob("*.png"))
    pool = {p.name for p in (raw / "imagesUnlabeled").glob("*.png")}
    assert len(validation) == 4 and seed["splits"]["validation"] == 4
    assert not {f"{c}_0000.png" for c in validation} & pool
    for arm in tuning_arms():
        record = seed["arms"][arm.name]
        assert len(record["validation_curve"]) == len(record["curve"]) == SCALES["smoke2"].num_epochs + 1
        assert all(sorted(row) == validation for row in record["validation_curve_per_case"])
        assert record["tunes"] == arm.tunes
    for method, chosen in seed["tuning"].items():
        candidates = [a.name for a in tuning_arms() if a.tunes == method]
        best = max(seed["arms"][n]["validation_summary"]["sustained"] for n in candidates)
        assert seed["arms"][chosen["arm"]]["validation_summary"]["sustained"] == best
    top_bottom, top_random = (seed["arms"][n] for n in tuned)
    assert top_bottom["same_run_as"] == seed["tuning"]["RN-DPO"]["arm"]  # not trained twice
    assert top_random["config"]["beta"] == seed["tuning"]["DPO"]["beta"]
    assert top_random["config"]["learning_rate"] == seed["tuning"]["DPO"]["learning_rate"]
    assert "same_run_as" not in top_random and top_random["mining"] == "top_random"
    # --tuning-from: a study of another seed takes this choice, runs no tuning arm, and trains its oracle
    # top_bottom arm at the choice (no tuning arm of its own stands in for it); --full-label-from: it takes the
    # full-label model too and trains none
    borrowed = tmp_path / "borrowed"
    Study("synthetic", None, "smoke2", borrowed, seeds=(1,), only_arms=tuned[:1], tuning_from=out,
          full_label_from=out).run()
    saved = json.loads((borrowed / "results.json").read_text())
    full_label = json.loads((out / "results.json").read_text())["full_label"]
    assert saved["full_label"] == {**full_label, "from": str(out / "results.json")}
    assert not list((borrowed / "nnUNet_raw").glob("*FullLabel*"))  # no full-label dataset made, none trained
    other = saved["seeds"]["1"]
    assert list(other["arms"]) == tuned[:1] and other["tuning"] == seed["tuning"]
    assert saved["protocol"]["tuning_from"]["seed"] == 0
    arm = other["arms"][tuned[0]]
    assert "same_run_as" not in arm and len(arm["curve"]) == SCALES["smoke2"].num_epochs + 1
    assert arm["config"]["beta"] == seed["tuning"]["RN-DPO"]["beta"]
    assert arm["config"]["learning_rate"] == seed["tuning"]["RN-DPO"]["learning_rate"]
