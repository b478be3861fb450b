"""End to end with the real nnU-Net commands on tiny synthetic datasets (slower tier, ``-m e2e``).

plan/preprocess → short base training → ``nnUNetv2_train -tr nnUNetTrainer{RNDPO,DPO,PseudoLabel}`` →
``nnUNetv2_predict`` → ``nnUNetv2_evaluate_folder``, resume with ``--c``, external QC scores, the
proposal cache, the base-checkpoint error, and a 3D run.
"""

import hashlib
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import private_copy

from nnunetv2_rndpo.judges import write_scores_csv
from nnunetv2_rndpo.paths import BENCHMARK_FOLDERS, nnunet_environment, results_folder
from nnunetv2_rndpo.synthetic import make_tiny_dataset

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def run(command: list[str], env: dict, expect_ok: bool = True, **env_extra) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / command[0]), *command[1:]], env={**env, **env_extra},
                            capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def make_env(root: Path) -> dict:
    """The environment of nnU-Net commands working in ``root/{raw,preprocessed,results}`` (the tests' layout)."""
    return nnunet_environment(root, folder_names=BENCHMARK_FOLDERS)


def write_config(root: Path, name: str, **values) -> str:
    config = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 2,
              "num_proposals": 4, "eval_every": 1, "base_trainer": "nnUNetTrainer_rndpoSmoke", **values}
    path = root / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def prepare(root: Path, dataset_id: int, dim: int, configuration: str) -> dict:
    env = make_env(root)
    make_tiny_dataset(root / "raw", dataset_id, dim=dim)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-npfp", "1", "-np", "1"],
        env, nnUNet_n_proc_DA="1")
    run(["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", "nnUNetTrainer_rndpoSmoke", "-device", "cpu"],
        env)
    return env


@pytest.fixture(scope="module")
def tiny2d(tiny2d_base, tmp_path_factory):
    """This module's own copy of the session's Dataset991_Tiny2D and its base model (conftest.py)."""
    root = tmp_path_factory.mktemp("tiny2d")
    return root, private_copy(tiny2d_base, root)


def fold_folder(root: Path, trainer: str, dataset: str = "Dataset991_Tiny2D", configuration: str = "2d",
                fold: int | str = 0) -> Path:
    return results_folder(root / "results", dataset, trainer, "nnUNetPlans", configuration, fold)


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(r) for r in (folder / "rndpo_metrics.jsonl").read_text().splitlines()]


def predict_and_evaluate(root: Path, env: dict, trainer: str, dataset_id: int = 991, configuration: str = "2d",
                         dataset: str = "Dataset991_Tiny2D", ending: str = ".png", device: str = "cpu") -> float:
    out = root / f"pred_{trainer}_{device}"
    run(["nnUNetv2_predict", "-i", str(root / "raw" / dataset / "imagesTs"), "-o", str(out), "-d", str(dataset_id),
         "-c", configuration, "-f", "0", "-tr", trainer, "-device", device, "-npp", "0", "-nps", "0",
         "--disable_progress_bar"], env)
    run(["nnUNetv2_evaluate_folder", str(root / "raw" / dataset / "labelsTs"), str(out),
         "-djfile", str(out / "dataset.json"), "-pfile", str(out / "plans.json"), "-np", "1"], env)
    return json.loads((out / "summary.json").read_text())["foreground_mean"]["Dice"]


@pytest.mark.parametrize(
    "trainer", ["nnUNetTrainerRNDPO", "nnUNetTrainerDPO", "nnUNetTrainerPseudoLabel", "nnUNetTrainerContinuedSFT"]
)
def test_train_predict_evaluate(tiny2d, trainer):
    root, env = tiny2d
    anchors = {"consistency_weight": 1.0, "agreement_weight": 0.5, "sft_weight": 0.5, "guard_max_kl": 0.5}
    # DPO runs its preference batches in an augmentation worker (nnUNet_n_proc_DA=1), the others in-process
    run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu"], env,
        nnUNet_rndpo_config=write_config(root, trainer, **(anchors if trainer == "nnUNetTrainerRNDPO" else {})),
        nnUNet_n_proc_DA="1" if trainer == "nnUNetTrainerDPO" else "0")
    folder = fold_folder(root, trainer)
    assert (folder / "checkpoint_final.pth").is_file() and (folder / "rndpo_progress.png").is_file()
    effective = json.loads((folder / "rndpo_config.json").read_text())
    assert effective["normalization"] == ("none" if trainer == "nnUNetTrainerDPO" else "region")
    rows = read_rows(folder)
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # epoch 0 = the base model, evaluated
    for row in rows:
        assert all(math.isfinite(v) for k, v in row.items() if k not in ("epoch", "eval/dice_per_case")), row
        assert 0 <= row["eval/dice"] <= 1 and len(row["eval/dice_per_case"]) > 0
    assert "judge/margin_mean" in rows[1] and "judge/oracle_pair_acc" in rows[1] and "guard/kl" in rows[1]
    if trainer in ("nnUNetTrainerRNDPO", "nnUNetTrainerDPO"):
        for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen", "region/size_mean",
                    "pairs/skipped", "loss/preference"):
            assert key in rows[1], key
    if trainer == "nnUNetTrainerRNDPO":
        assert {"loss/consistency", "loss/agreement", "loss/sft", "guard/rollbacks"} <= set(rows[1])
    dice = predict_and_evaluate(root, env, trainer)
    assert 0 < dice <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it on one)")
def test_train_predict_evaluate_on_cuda(tiny2d):
    """The CUDA paths: nnU-Net's autocast and GradScaler in the preference step, pinned memory in the
    augmentation worker, the policy's predictor on the GPU (``eval_every``, drift guard), ``nnUNetv2_predict``."""
    root, env = tiny2d
    trainer = "nnUNetTrainerRNDPO"
    base = fold_folder(root, "nnUNetTrainer_rndpoSmoke") / "checkpoint_final.pth"
    # results beside the CPU runs' folders, not over them
    env = nnunet_environment(root, folder_names=("raw", "preprocessed", "results_cuda"))
    config = write_config(root, "cuda", guard_max_kl=0.5, base_checkpoint=str(base))
    run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cuda"], env, nnUNet_rndpo_config=config,
        nnUNet_n_proc_DA="1")
    folder = results_folder(root / "results_cuda", "Dataset991_Tiny2D", trainer, "nnUNetPlans", "2d", 0)
    rows = read_rows(folder)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and all(0 <= r["eval/dice"] <= 1 for r in rows)
    assert all(math.isfinite(r["loss/preference"]) and math.isfinite(r["guard/kl"]) for r in rows[1:])
    final = torch.load(folder / "checkpoint_final.pth", weights_only=False)
    assert next(iter(final["network_weights"].values())).is_cuda
    scaler = final["grad_scaler_state"]  # the preference steps went through nnU-Net's grad scaler
    assert scaler and (scaler["_growth_tracker"] > 0 or scaler["scale"] < 2.0**16), scaler
    assert 0 < predict_and_evaluate(root, env, trainer, device="cuda") <= 1


def test_resume_keeps_the_reference_and_predicts(tiny2d):
    root, env = tiny2d
    trainer = "nnUNetTrainerRNDPO"
    # fold 0 of this trainer finished in test_train_predict_evaluate: training it again from the base is an opt-in
    config = write_config(root, "resume", num_epochs=1, eval_every=0, overwrite_finished_fold=True)
    folder = fold_folder(root, trainer)
    base = torch.load(fold_folder(root, "nnUNetTrainer_rndpoSmoke") / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)["network_weights"]
    result = run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu"], env,
                 nnUNet_rndpo_config=config)
    # the start of a run says what it will do and, after the first iterations, how long it takes
    assert "RN-DPO: nnUNetTrainerRNDPO: 1 epochs × 3 iterations of" in result.stdout
    assert f"Config: {config}" in result.stdout
    assert "pool cases (judge agreement, mining top_bottom), mean |D| " in result.stdout
    assert " s/iteration, ~" in result.stdout and "for 1 × 3 iterations" in result.stdout
    assert "RN-DPO: nnUNetTrainerRNDPO: 1 epochs" in "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    pairs_before = json.loads((folder / "rndpo_pairs.json").read_text())
    assert (folder / "validation" / "summary.json").is_file()  # final_validation: true (default) validates
    # nnU-Net's export packs debug.json, which carries the provenance (rndpo_config.json stays behind)
    exported = root / "exported.zip"
    run(["nnUNetv2_export_model_to_zip", "-d", "991", "-o", str(exported), "-c", "2d", "-tr", trainer, "-f", "0"], env)
    with zipfile.ZipFile(exported) as archive:
        debug = json.loads(archive.read((folder / "debug.json").relative_to(root / "results").as_posix()))
    assert debug["rndpo"]["config"] == json.loads((folder / "rndpo_config.json").read_text())
    assert debug["rndpo"]["base_model"] == "nnUNetTrainer_rndpoSmoke__nnUNetPlans__2d"
    assert debug["rndpo"]["base_checkpoint_sha256"] == hashlib.sha256(
        (fold_folder(root, "nnUNetTrainer_rndpoSmoke") / "checkpoint_final.pth").read_bytes()).hexdigest()
    (folder / "validation" / "summary.json").unlink()
    config = write_config(root, "resume", num_epochs=2, eval_every=0, final_validation=False)
    result = run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu", "--c"], env,
                 nnUNet_rndpo_config=config)
    assert "Epoch 1" in result.stdout and "Epoch 0\n" not in result.stdout
    assert "final validation skipped" in result.stdout and not (folder / "validation" / "summary.json").exists()
    reference = torch.load(folder / "rndpo_reference.pth", map_location="cpu", weights_only=True)
    assert all(torch.equal(reference[k], base[k]) for k in base)
    assert json.loads((folder / "rndpo_pairs.json").read_text()) == pairs_before
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    assert any(not torch.equal(final["network_weights"][k], base[k]) for k in base)
    # --val validates even with final_validation: false
    run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu", "--val"], env,
        nnUNet_rndpo_config=config)
    assert (folder / "validation" / "summary.json").is_file()
    assert 0 < predict_and_evaluate(root, env, trainer) <= 1


def test_external_scores_and_proposal_cache(tiny2d):
    root, env = tiny2d
    trainer = "nnUNetTrainerDPO"
    unlabeled = root / "raw" / "Dataset991_Tiny2D" / "imagesUnlabeled"
    pool = sorted(p.name[: -len("_0000.png")] for p in unlabeled.iterdir())
    # a "QC system" that prefers the proposal with the highest index
    scores = {case: np.arange(4, dtype=float) for case in pool}
    csv_path = root / "qc_scores.csv"
    write_scores_csv(csv_path, scores)
    config = write_config(root, "external", judge="external", judge_scores=str(csv_path), eval_every=0, num_epochs=1,
                          overwrite_finished_fold=True)  # retrains the fold of test_train_predict_evaluate
    run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu"], env, nnUNet_rndpo_config=config)
    pairs = json.loads((fold_folder(root, trainer) / "rndpo_pairs.json").read_text())["pairs"]
    assert all(p["chosen"] == 3 and p["rejected"] == 0 for p in pairs)

    good_csv = csv_path.read_text()
    csv_path.write_text("case_id,proposal,score\n" + f"{pool[0]},0,nan\n")
    result = run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu"], env, expect_ok=False,
                 nnUNet_rndpo_config=config)
    assert result.returncode != 0 and "is not finite" in result.stderr

    # the same base model again: the cached proposals are reused, not generated
    csv_path.write_text(good_csv)
    result = run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu"], env,
                 nnUNet_rndpo_config=config)
    assert "reusing proposals" in result.stdout and "generated proposals" not in result.stdout

    # a changed base model invalidates the cache: proposals are generated again
    base_file = fold_folder(root, "nnUNetTrainer_rndpoSmoke") / "checkpoint_final.pth"
    changed = root / "changed_base.pth"
    checkpoint = torch.load(base_file, map_location="cpu", weights_only=False)
    for value in checkpoint["network_weights"].values():
        if value.is_floating_point():
            value.mul_(1.01)
    torch.save(checkpoint, changed)
    config = write_config(root, "changed", base_checkpoint=str(changed), eval_every=0, num_epochs=1,
                          overwrite_finished_fold=True)
    result = run(["nnUNetv2_train", "991", "2d", "0", "-tr", trainer, "-device", "cpu"], env,
                 nnUNet_rndpo_config=config)
    assert "generated proposals for 6 cases" in result.stdout


def test_missing_base_checkpoint_prints_the_command(tiny2d, tmp_path):
    """The base model was trained with nnUNetTrainer_rndpoSmoke, the config names nnUNetTrainer: the message names
    the trainer that exists and the key to set, without a traceback."""
    root, env = tiny2d
    # the fold may be finished by an earlier test: allow the fresh run, so that the base checkpoint is what fails
    config = write_config(root, "missing", base_trainer="nnUNetTrainer", overwrite_finished_fold=True)
    result = run(["nnUNetv2_train", "991", "2d", "0", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"], env,
                 expect_ok=False, nnUNet_rndpo_config=config)
    assert result.returncode != 0
    assert "nnUNetv2_train 991 2d 0 -tr nnUNetTrainer -p nnUNetPlans" in result.stderr
    assert "nnUNetTrainer_rndpoSmoke (fold_0: checkpoint_final.pth" in result.stderr
    assert '{"base_trainer": "nnUNetTrainer_rndpoSmoke"}' in result.stderr
    assert "Traceback" not in result.stderr and "\nFileNotFoundError: Base checkpoint" in f"\n{result.stderr}"


def test_a_bad_config_ends_nnunetv2_train_with_the_message_alone(tiny2d):
    root, env = tiny2d
    config = write_config(root, "bad_mining", mining=3)
    result = run(["nnUNetv2_train", "991", "2d", "0", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"], env,
                 expect_ok=False, nnUNet_rndpo_config=config)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("ValueError: config key 'mining': 3 has the wrong type")
    assert "Traceback" not in result.stderr
    traced = run(["nnUNetv2_train", "991", "2d", "0", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"], env,
                 expect_ok=False, nnUNet_rndpo_config=config, nnUNet_rndpo_traceback="1")
    assert traced.returncode != 0 and "Traceback" in traced.stderr


def test_3d(tmp_path):
    """3D, with ``local`` mining: the trainer makes the hybrids, judges them with the proposals and mines them."""
    env = prepare(tmp_path, 992, 3, "3d_fullres")
    run(["nnUNetv2_train", "992", "3d_fullres", "0", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"], env,
        nnUNet_rndpo_config=write_config(tmp_path, "3d", num_epochs=1, num_proposals=8, mining="local",
                                         mining_max_pairs_per_case=4, local_part_voxels=64))
    folder = fold_folder(tmp_path, "nnUNetTrainerRNDPO", "Dataset992_Tiny3D", "3d_fullres")
    assert [r["epoch"] for r in read_rows(folder)] == [0, 1]
    pairs = json.loads((folder / "rndpo_pairs.json").read_text())["pairs"]
    assert pairs and all(max(p["chosen"], p["rejected"]) >= 8 and 10 <= p["region_size"] <= 64 for p in pairs)
    assert 0 < predict_and_evaluate(tmp_path, env, "nnUNetTrainerRNDPO", 992, "3d_fullres", "Dataset992_Tiny3D",
                                    ".nii.gz") <= 1
