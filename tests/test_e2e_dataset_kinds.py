"""Every kind of nnU-Net dataset end to end (slower tier, ``-m e2e``): region-based, ignore label, two input
channels, ``3d_lowres`` and the cascade (docs/getting_started.md, "Dataset kinds").

Each kind goes through plan/preprocess → base model (``nnUNetTrainer_rndpoSmoke``) → ``nnUNetv2_train -tr
nnUNetTrainerRNDPO`` → ``nnUNetv2_predict`` → ``nnUNetv2_evaluate_folder``. To keep the tier fast, plans, base
models and fine-tuned models are shared: one 2D dataset is region-based, has an ignore label and two channels
(nnU-Net accepts the combination), and one 3D dataset serves ``3d_lowres`` and the cascade.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_e2e_trainer import fold_folder, make_env, read_rows, run, write_config

from nnunetv2_rndpo.paths import rndpo_cache_folder
from nnunetv2_rndpo.synthetic import make_tiny_dataset

pytestmark = pytest.mark.e2e
KINDS_2D = "Dataset993_Kinds2D"


def predict_and_evaluate(root: Path, env: dict, dataset: str, configuration: str, trainer: str, fold: str,
                         ending: str, *extra: str) -> dict:
    """``nnUNetv2_predict`` of imagesTs then ``nnUNetv2_evaluate_folder``; returns the ``summary.json``."""
    out = root / f"pred_{trainer}_{configuration}"
    run(["nnUNetv2_predict", "-i", str(root / "raw" / dataset / "imagesTs"), "-o", str(out), "-d", dataset,
         "-c", configuration, "-f", fold, "-tr", trainer, "-device", "cpu", "-npp", "0", "-nps", "0",
         "--disable_progress_bar", *extra], env)
    run(["nnUNetv2_evaluate_folder", str(root / "raw" / dataset / "labelsTs"), str(out),
         "-djfile", str(out / "dataset.json"), "-pfile", str(out / "plans.json"), "-np", "1"], env)
    return json.loads((out / "summary.json").read_text())


# ------------------------------------------------------------------------------- 2D: regions, ignore, channels


@pytest.fixture(scope="module")
def kinds2d(tmp_path_factory):
    """Region-based (whole = {1, 2}, core = {2}), ignore label 3, two channels: planned, base-trained, fine-tuned
    with RN-DPO (oracle judge, test Dice every epoch), predicted and evaluated."""
    root = tmp_path_factory.mktemp("kinds2d")
    env = make_env(root)
    make_tiny_dataset(root / "raw", 993, dim=2, regions=True, ignore_label=True, channels=2, name="Kinds2D")
    run(["nnUNetv2_plan_and_preprocess", "-d", "993", "-c", "2d", "-npfp", "1", "-np", "1"], env, nnUNet_n_proc_DA="1")
    run(["nnUNetv2_train", "993", "2d", "0", "-tr", "nnUNetTrainer_rndpoSmoke", "-device", "cpu"], env)
    run(["nnUNetv2_train", "993", "2d", "0", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"], env,
        nnUNet_rndpo_config=write_config(root, "kinds2d", num_epochs=1, judge="oracle"))
    summary = predict_and_evaluate(root, env, KINDS_2D, "2d", "nnUNetTrainerRNDPO", "0", ".png")
    return root, env, summary


def test_region_based(kinds2d):
    root, _, summary = kinds2d
    folder = fold_folder(root, "nnUNetTrainerRNDPO", KINDS_2D)
    rows = read_rows(folder)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(np.isfinite(v) for r in rows for v in r.values() if not isinstance(v, dict)), rows
    per_case = [d for r in rows for d in r.get("eval/dice_per_case", {}).values()]  # NaN: no class in either mask
    assert per_case and all(0 <= d <= 1 for d in per_case if not np.isnan(d)), rows
    assert np.isfinite(rows[1]["rewards/margins"]) and rows[1]["pairs/skipped"] < 3 * 2  # the loss saw pairs
    # nnU-Net scores the regions, keyed as in dataset.json's order: whole = (1, 2), core = 2
    assert set(summary["mean"]) == {"(1, 2)", "2"}
    assert 0 < summary["foreground_mean"]["Dice"] <= 1
    predictions = [np.array(Image.open(p)) for p in sorted((root / "pred_nnUNetTrainerRNDPO_2d").glob("*.png"))]
    assert len(predictions) == 3 and all(set(np.unique(p)) <= {0, 1, 2} for p in predictions)


def test_ignore_label(kinds2d):
    root, env, _ = kinds2d
    labels = np.array(Image.open(root / "raw" / KINDS_2D / "labelsTr" / "tiny_000.png"))
    assert 3 in labels  # the ignore label is in the training labels
    predictions = [np.array(Image.open(p)) for p in (root / "pred_nnUNetTrainerRNDPO_2d").glob("*.png")]
    assert all(3 not in p for p in predictions)  # and never predicted
    rows = read_rows(fold_folder(root, "nnUNetTrainerRNDPO", KINDS_2D))
    assert 0 <= rows[1]["judge/oracle_pair_acc"] <= 1 and 0 < rows[1]["eval/dice"] <= 1
    # the pseudo-label baseline trains on region targets with nnU-Net's extra ignore channel
    run(["nnUNetv2_train", "993", "2d", "0", "-tr", "nnUNetTrainerPseudoLabel", "-device", "cpu"], env,
        nnUNet_rndpo_config=write_config(root, "pseudo", num_epochs=1, eval_every=0, final_validation=False,
                                         judge="oracle"))
    assert (fold_folder(root, "nnUNetTrainerPseudoLabel", KINDS_2D) / "checkpoint_final.pth").is_file()


def test_two_input_channels(kinds2d):
    root, _, summary = kinds2d
    pool = rndpo_cache_folder(root / "preprocessed", KINDS_2D, "nnUNetPlans", "2d") / "pool"
    images = sorted(pool.glob("*_image.npy"))
    assert len(images) == 6 and all(np.load(p, mmap_mode="r").shape[0] == 2 for p in images)
    assert summary["foreground_mean"]["Dice"] > 0


# ---------------------------------------------------------------------------------------------- 3D: 3d_lowres, cascade

TINY_3D = "Dataset994_Tiny3D"


def add_lowres_and_cascade(plans_file: Path) -> None:
    """Adds ``3d_lowres`` (spacing 2 mm, half the image size) and ``3d_cascade_fullres`` to planned plans.

    nnU-Net's planner makes ``3d_lowres`` only when the ``3d_fullres`` patch covers less than a quarter of the
    median image (``ExperimentPlanner.lowres_creation_threshold``), i.e. for images several times larger than a
    patch of ~128³: never for a tiny dataset. nnU-Net reads custom configurations from the plans file
    (``inherits_from``), so the test writes the two configurations the planner would have written.
    """
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_lowres"] = {
        "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres", "spacing": [2.0, 2.0, 2.0],
        "patch_size": [8, 12, 12], "median_image_size_in_voxels": [8.0, 12.0, 12.0], "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    plans_file.write_text(json.dumps(plans, indent=1))


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory):
    """The 3D tiny dataset with ``3d_lowres`` and the cascade in its plans and a base ``3d_lowres`` model (fold
    ``all``: its final validation segments every labeled case, which the cascade trains on)."""
    root = tmp_path_factory.mktemp("tiny3d")
    env = make_env(root)
    make_tiny_dataset(root / "raw", 994, dim=3, num_labeled=4, num_test=2)
    run(["nnUNetv2_plan_and_preprocess", "-d", "994", "-c", "3d_fullres", "-npfp", "1", "-np", "1"], env,
        nnUNet_n_proc_DA="1")
    add_lowres_and_cascade(root / "preprocessed" / TINY_3D / "nnUNetPlans.json")
    run(["nnUNetv2_preprocess", "-d", "994", "-c", "3d_lowres", "-np", "1"], env, nnUNet_n_proc_DA="1")
    run(["nnUNetv2_train", "994", "3d_lowres", "all", "-tr", "nnUNetTrainer_rndpoSmoke", "-device", "cpu"], env)
    return root, env


def test_3d_lowres(tiny3d):
    root, env = tiny3d
    run(["nnUNetv2_train", "994", "3d_lowres", "all", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"], env,
        nnUNet_rndpo_config=write_config(root, "lowres", num_epochs=1, final_validation=False))
    folder = fold_folder(root, "nnUNetTrainerRNDPO", TINY_3D, "3d_lowres", "all")
    rows = read_rows(folder)
    assert [r["epoch"] for r in rows] == [0, 1] and 0 < rows[1]["eval/dice"] <= 1
    pool = rndpo_cache_folder(root / "preprocessed", TINY_3D, "nnUNetPlans", "3d_lowres") / "pool"
    assert np.load(next(pool.glob("*_image.npy"))).shape[1:] == (8, 12, 12)  # the pool in lowres space
    summary = predict_and_evaluate(root, env, TINY_3D, "3d_lowres", "nnUNetTrainerRNDPO", "all", ".nii.gz")
    assert 0 < summary["foreground_mean"]["Dice"] <= 1


def test_cascade(tiny3d):
    root, env = tiny3d
    config = write_config(root, "cascade", num_epochs=1, final_validation=False)
    run(["nnUNetv2_train", "994", "3d_cascade_fullres", "all", "-tr", "nnUNetTrainer_rndpoSmoke", "-device", "cpu"],
        env)
    result = run(["nnUNetv2_train", "994", "3d_cascade_fullres", "all", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"],
                 env, nnUNet_rndpo_config=config)
    # the pool and the test cases were segmented by the base 3d_lowres model first, as nnUNetv2_predict would
    assert "3d_lowres segmented 6 case(s)" in result.stdout and "3d_lowres segmented 2 case(s)" in result.stdout
    cache = rndpo_cache_folder(root / "preprocessed", TINY_3D, "nnUNetPlans", "3d_cascade_fullres")
    previous = [np.load(p) for p in sorted((cache / "pool").glob("*_previous_stage.npy"))]
    assert len(previous) == 6 and all(p.shape == (16, 24, 24) and p.max() <= 1 for p in previous)
    assert any(p.max() == 1 for p in previous)
    rows = read_rows(fold_folder(root, "nnUNetTrainerRNDPO", TINY_3D, "3d_cascade_fullres", "all"))
    assert [r["epoch"] for r in rows] == [0, 1] and 0 < rows[1]["eval/dice"] <= 1
    # inference as nnU-Net does it: the previous stage first, then the cascade with its predictions
    lowres = predict_and_evaluate(root, env, TINY_3D, "3d_lowres", "nnUNetTrainer_rndpoSmoke", "all", ".nii.gz")
    summary = predict_and_evaluate(root, env, TINY_3D, "3d_cascade_fullres", "nnUNetTrainerRNDPO", "all", ".nii.gz",
                                   "-prev_stage_predictions", str(root / "pred_nnUNetTrainer_rndpoSmoke_3d_lowres"))
    assert 0 < lowres["foreground_mean"]["Dice"] <= 1 and 0 < summary["foreground_mean"]["Dice"] <= 1
