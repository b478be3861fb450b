"""Interruption and determinism with the real commands on a tiny 2D dataset (slower tier, ``-m e2e``).

One module fixture copies the session's planned dataset and tiny base model (conftest.py); its pool gets one
large case so that proposal generation takes long enough to be killed half-way. The tests SIGKILL
``nnUNetv2_rndpo_proposals`` and ``nnUNetv2_train -tr nnUNetTrainerRNDPO`` mid-way and rerun them, and
train twice from scratch to check that proposals, scores, pairs and final weights are identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import private_copy
from test_e2e_trainer import BIN, run, write_config

from nnunetv2_rndpo.paths import results_folder, rndpo_cache_folder

pytestmark = pytest.mark.e2e
DATASET_ID, DATASET = 991, "Dataset991_Tiny2D"  # the session's tiny 2D dataset (conftest.py)
TRAINER = "nnUNetTrainerRNDPO"
PROPOSALS = ["-d", str(DATASET_ID), "-c", "2d", "-tr", "nnUNetTrainer_rndpoSmoke", "-n", "4", "--quiet",
             "-device", "cpu"]
SCHEDULE = {"num_epochs": 3, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1, "eval_every": 0,
            "guard_num_cases": 0, "save_every": 1}
POOL_SIZE = 7  # the synthetic pool's 6 cases and the large one


@pytest.fixture(scope="module")
def reliability(tiny2d_base, tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("reliability")
    env = private_copy(tiny2d_base, root)  # this module's own copy of the dataset and its base model
    # 64×64 (9 sliding-window tiles per flip) makes the second case slow enough to kill the proposals after the
    # first, and its patches are crops without padding (views of the pool image, see sampling.py)
    big = np.random.default_rng(0).normal(100, 20, (64, 64)).clip(0, 255).astype(np.uint8)
    Image.fromarray(big).save(root / "raw" / DATASET / "imagesUnlabeled" / "tiny_008_big_0000.png")
    shutil.copytree(root / "results", root / "base_results")  # the base model alone, for clean runs
    return root, env


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as stderr:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def kill_when(process: subprocess.Popen, condition, log: Path, timeout: float = 300.0):
    """SIGKILLs the process group as soon as ``condition()`` returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return found
        if process.poll() is not None:
            raise AssertionError(f"finished (rc {process.returncode}) before it could be killed:\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"timed out waiting to kill it:\n{log.read_text()[-3000:]}")


def proposals_command(env: dict) -> list[str]:
    return [sys.executable, "-m", "nnunetv2_rndpo.commands", "proposals", *PROPOSALS]


def test_killed_proposal_generation_reruns_to_completion(reliability):
    root, env = reliability
    proposals = rndpo_cache_folder(root / "preprocessed", DATASET, "nnUNetPlans", "2d") / "proposals"
    log = root / "proposals_killed.log"
    first = kill_when(start(proposals_command(env), env, log),
                      lambda: next(proposals.glob("*/tiny_008.npz"), None), log)
    cache = first.parent
    complete = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz") if not p.name.endswith(".tmp.npz")}
    assert 1 <= len(complete) < POOL_SIZE and not (cache / "manifest.json").exists()

    result = subprocess.run(proposals_command(env), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"generated proposals for {POOL_SIZE - len(complete)} cases" in result.stdout
    assert f"proposals: {POOL_SIZE}/{POOL_SIZE} pool cases" in result.stdout and (cache / "manifest.json").is_file()
    for name, mtime in complete.items():  # complete cases were reused, not rewritten
        assert (cache / name).stat().st_mtime_ns == mtime
    # only finished files under their own names (a killed writer's temporary file is hidden: .<name>.<pid>.<random>.tmp)
    assert {p.suffix for p in cache.glob("*")} <= {".npz", ".source", ".json"}
    for case_file in cache.glob("*.npz"):
        with np.load(case_file) as f:
            assert f["masks"].shape[0] == 4


def train(env: dict, root: Path, results: Path, preprocessed: Path) -> Path:
    config = write_config(root, "reliability", **SCHEDULE)
    run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"], env,
        nnUNet_results=str(results), nnUNet_preprocessed=str(preprocessed), nnUNet_rndpo_config=config)
    return results_folder(results, DATASET, TRAINER, "nnUNetPlans", "2d", 0)


@pytest.fixture(scope="module")
def clean_runs(reliability) -> list[tuple[Path, Path]]:
    """Two runs from scratch, each with its own copy of the base model and its own pool and proposal cache."""
    root, env = reliability
    runs = []
    for name in ("a", "b"):
        results, preprocessed = root / f"results_{name}", root / f"preprocessed_{name}"
        shutil.copytree(root / "base_results", results)
        shutil.copytree(root / "preprocessed", preprocessed, ignore=shutil.ignore_patterns("rndpo"))
        runs.append((train(env, root, results, preprocessed), preprocessed))
    return runs


def weights(folder: Path, name: str = "checkpoint_final.pth") -> dict[str, torch.Tensor]:
    return torch.load(folder / name, map_location="cpu", weights_only=False)["network_weights"]


def validation_dice(folder: Path) -> float:
    return json.loads((folder / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]


def test_two_runs_give_identical_proposals_scores_pairs_and_weights(clean_runs):
    (a, cache_a), (b, cache_b) = clean_runs
    (proposals_a,) = (rndpo_cache_folder(cache_a, DATASET, "nnUNetPlans", "2d") / "proposals").iterdir()
    (proposals_b,) = (rndpo_cache_folder(cache_b, DATASET, "nnUNetPlans", "2d") / "proposals").iterdir()
    assert proposals_a.name == proposals_b.name and len(list(proposals_a.glob("*.npz"))) == POOL_SIZE
    for case_file in proposals_a.glob("*.npz"):
        with np.load(case_file) as x, np.load(proposals_b / case_file.name) as y:
            assert np.array_equal(x["masks"], y["masks"]) and np.array_equal(x["probabilities"], y["probabilities"])
    pairs_a, pairs_b = (json.loads((f / "rndpo_pairs.json").read_text()) for f in (a, b))
    assert pairs_a["pairs"] and pairs_a["pairs"] == pairs_b["pairs"]  # same pairs with the same judge scores
    assert pairs_a["judge_metrics"] == pairs_b["judge_metrics"]
    final_a, final_b = weights(a), weights(b)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert validation_dice(a) == validation_dice(b)


def test_killed_training_resumes_with_c_to_a_model_of_clean_quality(reliability, clean_runs):
    root, env = reliability
    (clean, _), _ = clean_runs
    folder = results_folder(root / "results", DATASET, TRAINER, "nnUNetPlans", "2d", 0)
    config = write_config(root, "reliability", **SCHEDULE)
    log = root / "train_killed.log"
    command = [str(BIN / "nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    kill_when(start(command, {**env, "nnUNet_rndpo_config": config}, log),
              lambda: (folder / "checkpoint_latest.rndpo.json").is_file(), log)
    assert not (folder / "checkpoint_final.pth").exists()
    killed_at = torch.load(folder / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"]
    assert 1 <= killed_at < SCHEDULE["num_epochs"]

    result = run(["nnUNetv2_train", *command[1:], "--c"], env, nnUNet_rndpo_config=config)
    assert f"Epoch {killed_at}\n" in result.stdout and "Epoch 0\n" not in result.stdout
    assert "reusing proposals" in result.stdout
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == SCHEDULE["num_epochs"]
    base = weights(results_folder(root / "base_results", DATASET, "nnUNetTrainer_rndpoSmoke", "nnUNetPlans", "2d", 0))
    reference = torch.load(folder / "rndpo_reference.pth", map_location="cpu", weights_only=True)
    assert all(torch.equal(reference[k], base[k]) for k in base)  # the reference is the base model, not the policy
    assert json.loads((folder / "rndpo_pairs.json").read_text())["pairs"] == \
        json.loads((clean / "rndpo_pairs.json").read_text())["pairs"]
    rows = [json.loads(r) for r in (folder / "rndpo_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(SCHEDULE["num_epochs"] + 1))  # no row lost or repeated
    assert abs(validation_dice(folder) - validation_dice(clean)) <= 0.05
