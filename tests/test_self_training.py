"""Self-training's pieces (fast tier): the pseudo-labelled raw dataset, the pseudo-labels' Dice, the export of a
proposal to nnU-Net logits, the study's ids, flags and report rows. End to end: tests/test_e2e_self_training.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import snapshot

from nnunetv2_rndpo.datasets import write_image
from nnunetv2_rndpo.self_training import mask_logits, pseudo_label_dice, pseudo_labeled_dataset
from nnunetv2_rndpo.study import Study, main
from nnunetv2_rndpo.synthetic import make_synthetic_dataset


def _ids(folder, suffix=".png"):
    return sorted(p.name.removesuffix(suffix) for p in folder.iterdir())


@pytest.fixture
def seed_dataset(tmp_path):
    """A synthetic study dataset (3 labeled, 4 pool, 2 test cases) and pseudo-labels (empty masks) for its pool."""
    raw = tmp_path / "nnUNet_raw"
    source = make_synthetic_dataset(raw, 980, dim=2, num_labeled=3, num_unlabeled=4, num_test=2,
                                    name="SyntheticStudySeed0", shape=(16, 16))
    pseudo = tmp_path / "pseudo_labels"
    pseudo.mkdir()
    for case in _ids(source / "labelsUnlabeled"):
        write_image(pseudo / f"{case}.png", np.zeros((16, 16), np.uint8))
    (pseudo / "dataset.json").write_text("{}")  # nnUNetv2_predict writes these beside the masks: ignored
    return source, pseudo


def test_pseudo_labeled_dataset_has_labeled_and_pool_cases_and_the_test_set(seed_dataset):
    source, pseudo = seed_dataset
    hidden_before = snapshot(source / "labelsUnlabeled")
    folder = pseudo_labeled_dataset(source, source.parent, 1080, pseudo, "Tta")
    assert folder.name == "Dataset1080_SyntheticStudySeed0SelfTrainTta"
    labeled, pool, test = (_ids(source / "labelsTr"), _ids(source / "labelsUnlabeled"), _ids(source / "labelsTs"))
    assert _ids(folder / "labelsTr") == sorted(labeled + pool)
    assert _ids(folder / "imagesTr", "_0000.png") == sorted(labeled + pool)
    assert _ids(folder / "labelsTs") == test and _ids(folder / "imagesTs", "_0000.png") == test
    assert not set(test) & set(_ids(folder / "labelsTr"))  # no test case leaks into training
    for case in labeled:  # labeled cases keep their labels, pool cases get the pseudo-labels, not the hidden ones
        assert (folder / "labelsTr" / f"{case}.png").resolve() == (source / "labelsTr" / f"{case}.png").resolve()
    for case in pool:
        assert (folder / "labelsTr" / f"{case}.png").resolve() == (pseudo / f"{case}.png").resolve()
    assert not (folder / "labelsUnlabeled").exists() and not (folder / "imagesUnlabeled").exists()
    assert snapshot(source / "labelsUnlabeled") == hidden_before
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["numTraining"] == len(labeled) + len(pool) == 7
    assert dataset["name"] == "SyntheticStudySeed0SelfTrainTta" and dataset["file_ending"] == ".png"


def test_pseudo_labeled_dataset_needs_every_pseudo_label_and_no_shared_case(seed_dataset):
    source, pseudo = seed_dataset
    missing = sorted(pseudo.glob("*.png"))[0]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"no pseudo-label for 1 of 4 pool cases.*{missing.stem}"):
        pseudo_labeled_dataset(source, source.parent, 1080, pseudo, "Tta")
    assert not list(source.parent.glob("Dataset1080_*"))  # nothing built from an incomplete set
    write_image(missing, np.zeros((16, 16), np.uint8))
    test_case = _ids(source / "imagesTs", "_0000.png")[0]
    shutil.copy(source / "imagesTs" / f"{test_case}_0000.png", source / "imagesUnlabeled" / f"{test_case}_0000.png")
    with pytest.raises(ValueError, match=f"{test_case}.*both training .* and test cases"):
        pseudo_labeled_dataset(source, source.parent, 1080, pseudo, "Tta")


def test_a_killed_build_is_built_again(seed_dataset):
    source, pseudo = seed_dataset
    partial = source.parent / "Dataset1080_SyntheticStudySeed0SelfTrainTta" / "labelsTr"
    partial.mkdir(parents=True)
    (partial / "stale.png").write_bytes(b"x")  # no dataset.json: a build that was killed
    folder = pseudo_labeled_dataset(source, source.parent, 1080, pseudo, "Tta")
    assert "stale" not in _ids(folder / "labelsTr") and len(_ids(folder / "labelsTr")) == 7


def test_pseudo_label_dice_against_the_hidden_labels(seed_dataset, tmp_path):
    source, pseudo = seed_dataset
    dataset = json.loads((source / "dataset.json").read_text())
    assert pseudo_label_dice(source / "labelsUnlabeled", source / "labelsUnlabeled", dataset) == pytest.approx(1.0)
    # empty pseudo-labels: Dice 0 for every class the hidden label has (the synthetic cases all have foreground)
    assert pseudo_label_dice(pseudo, source / "labelsUnlabeled", dataset) == pytest.approx(0.0)
    assert pseudo_label_dice(pseudo, tmp_path / "no_hidden_labels", dataset) is None


@pytest.mark.parametrize("labels, regions", [({"background": 0, "a": 1, "b": 2}, None),
                                             ({"background": 0, "whole": [1, 2], "b": 2}, [1, 2])])
def test_mask_logits_give_back_the_mask(labels, regions):
    """What ``write_top_proposals`` hands to nnU-Net's export: logits whose segmentation is the proposal."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(labels, regions)
    mask = np.random.default_rng(0).integers(0, 3, (1, 5, 6)).astype(np.uint8)
    logits = mask_logits(mask, manager)
    assert logits.shape == (manager.num_segmentation_heads, 1, 5, 6)
    assert np.array_equal(np.asarray(manager.convert_logits_to_segmentation(logits)), mask)


def test_study_gives_each_self_training_run_its_own_dataset_and_checks_its_flags(tmp_path):
    study = Study("synthetic", None, "smoke", tmp_path / "out", self_training=("tta", "top_proposal"))
    ids = [study.dataset_id(s, **kind) for s in range(10)
           for kind in ({}, {"full_label": True}, {"self_training": "tta"}, {"self_training": "top_proposal"})]
    assert len(set(ids)) == len(ids)  # no seed or arm shares a dataset (its raw, preprocessed, results folders)
    with pytest.raises(ValueError, match="unknown --self-training pseudo; valid: tta, top_proposal"):
        Study("synthetic", None, "smoke", tmp_path / "out", self_training=("pseudo",))
    with pytest.raises(ValueError, match="unknown --self-training-judge 'external'"):
        Study("synthetic", None, "smoke", tmp_path / "out", self_training_judge="external")
    study.results["seeds"]["0"] = {"arms": {}, "self_training": {"top_proposal": {"judge": "agreement"}}}
    study._save()
    with pytest.raises(ValueError, match="'agreement' judge, not 'oracle'; use another -o"):
        Study("synthetic", None, "smoke", tmp_path / "out", self_training=("top_proposal",),
              self_training_judge="oracle")
    Study("synthetic", None, "smoke", tmp_path / "out", self_training=("tta",), self_training_judge="oracle")
    with pytest.raises(SystemExit):
        main(["--dataset", "synthetic", "-o", str(tmp_path / "x"), "--self-training", "best"])


def test_a_finished_self_training_run_is_not_run_again(tmp_path, monkeypatch):
    study = Study("synthetic", None, "smoke", tmp_path / "out", self_training=("tta",))
    study.results["seeds"]["0"] = {"arms": {}, "self_training": {"tta": {"dice": 0.5}}}
    monkeypatch.setattr(study, "_run", lambda *a, **k: pytest.fail("a finished run started a command"))
    study.run_self_training(0, "tta")
    assert study.results["seeds"]["0"]["self_training"]["tta"] == {"dice": 0.5}


def _self_training_results():
    from test_study import _results

    results = _results()  # seeds 0 and 1 with base 0.80 and 0.82, full-label 0.90
    for seed, dice in (("0", 0.84), ("1", 0.84)):
        results["seeds"][seed]["arms"]["RN-DPO | oracle | top_bottom"]["seconds"] = 100 + int(seed) * 20
        results["seeds"][seed]["self_training"] = {
            "tta": {"dice": dice, "dice_per_case": {"t": dice}, "judge": None, "trainer": "nnUNetTrainer_cpuBase",
                    "seconds": {"pseudo_labels": 10.0, "plan": 20.0, "train": 270.0, "total": 300.0},
                    "pseudo_label_dice": 0.8, "cases": {"labeled": 10, "pseudo": 60}}}
    results["seeds"]["0"]["self_training"]["top_proposal"] = {
        **results["seeds"]["0"]["self_training"]["tta"], "judge": "agreement", "dice": 0.86}
    return results


def test_report_has_a_row_and_a_line_per_self_training_run(tmp_path, monkeypatch):
    import matplotlib.axes

    from nnunetv2_rndpo.study_report import plot_judge_curves, self_training_table, write_study_report

    results = _self_training_results()
    rows = {r["arm"]: r for r in self_training_table(results)}
    assert rows["tta"]["delta"] == pytest.approx([0.04, 0.02])  # paired with each seed's own base
    assert rows["tta"]["gap_share"] == pytest.approx([0.4, 0.25])
    text = write_study_report([results], tmp_path / "r.md", tmp_path / "f").read_text()
    main_table = [line for line in text.splitlines() if line.count("|") == 13]  # 12 columns
    dice = "0.8400 ± 0.0000"
    assert f"| self-training (tta) | – | – | 2 | {dice} | {dice} | {dice} | – | 0.0300 ± 0.0141 | 0.3250 ± 0.1061 | " \
           "– | 300 |" in main_table
    assert any(line.startswith("| self-training (top proposal) | agreement | – | 1 | 0.8600 |") for line in main_table)
    rows = {line.split(" | ")[2]: line for line in main_table if line.startswith("| RN-DPO | oracle |")}
    assert rows["top_bottom"].endswith("| 110 |")  # the arms' seconds beside the self-training ones
    assert rows["top_random"].endswith("| - |")  # an arm without seconds (older results)
    lines = {}
    draw = matplotlib.axes.Axes.axhline

    def record(self, y=0, *args, **kwargs):
        lines[kwargs.get("label")] = y
        return draw(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", record)
    plot_judge_curves(results, "oracle", tmp_path / "oracle.png")
    assert lines["self-training (tta)"] == pytest.approx(0.84) and lines["full-label"] == 0.90
    assert "self-training (top proposal), agreement" not in lines  # on one seed of two: not drawn, as for curves
