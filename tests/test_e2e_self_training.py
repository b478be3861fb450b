"""Self-training in ``nnUNetv2_rndpo_study`` end to end on the synthetic dataset at smoke scale (slower tier): real
``nnUNetv2_predict``, ``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train`` for both pseudo-label sources."""

from __future__ import annotations

import json

import pytest

from nnunetv2_rndpo.study import Study
from nnunetv2_rndpo.study_protocol import DATASETS, SCALES

CONTROL = "control (continued supervised)"


@pytest.mark.e2e
def test_self_training_arms_store_dice_per_case_seconds_and_resume(tmp_path, capsys):
    out = tmp_path / "study"
    study = Study("synthetic", None, "smoke", out, only_arms=[CONTROL], full_label=False,
                  self_training=("tta", "top_proposal"))
    study.run()
    results = json.loads((out / "results.json").read_text())
    seed = results["seeds"]["0"]
    runs = seed["self_training"]
    assert list(runs) == ["tta", "top_proposal"]
    test_cases = DATASETS["synthetic"].num_test
    for name, run in runs.items():
        assert set(run) >= {"dice", "dice_per_case", "seconds", "pseudo_label_dice", "trainer", "cases"}
        assert len(run["dice_per_case"]) == test_cases and all(0 <= d <= 1 for d in run["dice_per_case"].values())
        assert run["dice"] == pytest.approx(sum(run["dice_per_case"].values()) / test_cases)
        # a model of 30 smoke iterations from scratch can predict background only (CI saw Dice 0.0): its Dice is
        # a stored measurement here, not a training outcome to assert; the pseudo-labels come from the base model
        assert 0 <= run["dice"] <= 1 and 0 < run["pseudo_label_dice"] <= 1
        assert run["cases"] == {"labeled": SCALES["smoke"].num_labeled, "pseudo": seed["splits"]["unlabeled"]}
        assert run["trainer"] == SCALES["smoke"].base_trainer
        seconds = run["seconds"]
        assert all(seconds[k] > 0 for k in ("pseudo_labels", "plan", "train"))
        assert seconds["total"] == pytest.approx(seconds["pseudo_labels"] + seconds["plan"] + seconds["train"],
                                                 abs=0.2)
        # its own dataset, trained on labeled + pool cases, tested on the seed's test cases
        raw = study._raw(study.dataset_id(0, self_training=name))
        assert json.loads((raw / "dataset.json").read_text())["numTraining"] == sum(run["cases"].values())
        test_ids = {f.name.removesuffix("_0000.png") for f in (raw / "imagesTs").iterdir()}
        assert set(run["dice_per_case"]) == test_ids
    assert runs["top_proposal"]["judge"] == "agreement" and runs["tta"]["judge"] is None
    assert (out / "seed_0" / "scores_agreement.csv").is_file()
    # the base model the self-training replaces: the seed's base dataset and model are untouched by it
    assert study._raw(study.dataset_id(0)).name == "Dataset980_SyntheticStudySeed0"
    report = (out / "report.md").read_text()
    assert "| self-training (tta) | – | – | 1 |" in report
    assert "| self-training (top proposal) | agreement | – | 1 |" in report

    capsys.readouterr()
    Study("synthetic", None, "smoke", out, only_arms=[CONTROL], full_label=False,
          self_training=("tta", "top_proposal")).run()  # a rerun trains nothing again
    printed = capsys.readouterr().out
    assert "nnUNetv2_train" not in printed and "nnUNetv2_predict" not in printed
    assert json.loads((out / "results.json").read_text())["seeds"]["0"]["self_training"] == runs
