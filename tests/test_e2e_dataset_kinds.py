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


# ---------------------------------------------------------------------------------------------- 2D: regions, ignore, channels


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
    assert all(np.isfinite(r[k]) for r in rows for k in r), rows
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
    pool = root / "preprocessed" / KINDS_2D / "rndpo" / "nnUNetPlans_2d" / "pool"
    images = sorted(pool.glob("*_image.npy"))
    assert len(images) == 6 and all(np.load(p, mmap_mode="r").shape[0] == 2 for p in images)
    assert summary["foreground_mean"]["Dice"] > 0
