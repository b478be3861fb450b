"""Several folds, runs and re-runs on one dataset with the real commands (slower tier, ``-m e2e``).

One module fixture copies the session's tiny 2D dataset with base models of folds 0 and 1 (conftest.py). The
tests make both folds' proposals, scores and pairs and train both folds while the other fold's proposals are being made
(nothing of either is deleted), start a second run of a fold that is training (refused, naming the
first), and re-run a finished fold (refused, the folder left byte-identical).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import private_copy
from test_e2e_trainer import BIN, run, write_config

from nnunetv2_rndpo.fold_lock import LOCK_FILE
from nnunetv2_rndpo.paths import results_folder, rndpo_cache_folder

pytestmark = pytest.mark.e2e
DATASET_ID, DATASET = 991, "Dataset991_Tiny2D"  # the session's tiny 2D dataset (conftest.py)
BASE_TRAINER = "nnUNetTrainer_rndpoSmoke"
SCHEDULE = {"num_epochs": 1, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1, "eval_every": 0,
            "guard_num_cases": 0, "final_validation": False}


def command(env: dict, name: str, fold: int, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nnunetv2_rndpo.commands", name, "-d", str(DATASET_ID), "-c", "2d",
                             "-f", str(fold), "-tr", BASE_TRAINER, "-n", "4", "--quiet", "-device", "cpu", *args],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{name} {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def fold_folder(root: Path, trainer: str, fold: int) -> Path:
    return results_folder(root / "results", DATASET, trainer, "nnUNetPlans", "2d", fold)


def proposal_caches(root: Path) -> set[Path]:
    folder = rndpo_cache_folder(root / "preprocessed", DATASET, "nnUNetPlans", "2d") / "proposals"
    return {p for p in folder.iterdir() if p.is_dir()}


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train_command(fold: int, trainer: str = "nnUNetTrainerRNDPO", *extra: str) -> list[str]:
    return [str(BIN / "nnUNetv2_train"), str(DATASET_ID), "2d", str(fold), "-tr", trainer, "-device", "cpu", *extra]


def start(command_line: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command_line, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    process.wait(timeout=timeout)
    text = log.read_text()
    assert process.returncode == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def folds(tiny2d_two_folds_base, tmp_path_factory):
    """This module's own copy of the session's tiny 2D dataset with base models of folds 0 and 1 (conftest.py)."""
    root = tmp_path_factory.mktemp("folds")
    return root, private_copy(tiny2d_two_folds_base, root)


def test_folds_keep_their_proposals_scores_and_pairs_while_the_other_fold_works(folds):
    root, env = folds
    command(env, "proposals", 0)
    (cache_0,) = proposal_caches(root)
    command(env, "judge", 0, "--judge", "agreement")
    scores_0 = fold_folder(root, BASE_TRAINER, 0) / "rndpo_scores_agreement.csv"  # the default: per fold
    command(env, "mine", 0, "--scores", str(scores_0))
    pairs_0 = fold_folder(root, BASE_TRAINER, 0) / "rndpo_pairs_top_bottom.json"
    kept = snapshot(cache_0)
    outputs = {p: p.read_bytes() for p in (scores_0, pairs_0)}

    command(env, "proposals", 1)  # fold 1's proposals used to delete fold 0's cache
    assert len(proposal_caches(root)) == 2 and snapshot(cache_0) == kept

    # fold 0 trains from its mined pairs while fold 1's proposals of other settings (a third cache) are made
    config_0 = write_config(root, "fold0", pairs_file=str(pairs_0), base_trainer=BASE_TRAINER, **SCHEDULE)
    log_0 = root / "train_fold0.log"
    training_0 = start(train_command(0), {**env, "nnUNet_rndpo_config": config_0}, log_0)
    command(env, "proposals", 1, "--seed", "7")
    output_0 = finish(training_0, log_0)
    assert f"reusing proposals from {cache_0}" in output_0
    assert len(proposal_caches(root)) == 3 and snapshot(cache_0) == kept
    assert all(p.read_bytes() == content for p, content in outputs.items())

    # fold 1 trains, fold 0's files stay
    run(["nnUNetv2_train", *train_command(1)[1:]], env,
        nnUNet_rndpo_config=write_config(root, "fold1", base_trainer=BASE_TRAINER, **SCHEDULE))
    for fold in (0, 1):
        folder = fold_folder(root, "nnUNetTrainerRNDPO", fold)
        assert (folder / "checkpoint_final.pth").is_file() and (folder / "rndpo_pairs.json").is_file()
        assert not (folder / LOCK_FILE).exists()  # released at the end
    assert snapshot(cache_0) == kept and all(p.read_bytes() == content for p, content in outputs.items())
    names = {Path(json.loads((fold_folder(root, "nnUNetTrainerRNDPO", f) / "rndpo_pairs.json").read_text())
                  ["proposals"]).name for f in (0, 1)}
    assert len(names) == 2  # each fold trained on its own base model's proposals

    # the clean-up lists the caches and removes only the one no pairs file names (fold 1's seed 7)
    clean = subprocess.run([sys.executable, "-m", "nnunetv2_rndpo.commands", "clean", "-d", str(DATASET_ID)],
                           env=env, capture_output=True, text=True)
    assert clean.returncode == 0 and "1 removable" in clean.stdout and "Nothing was deleted" in clean.stdout
    assert len(proposal_caches(root)) == 3
    subprocess.run([sys.executable, "-m", "nnunetv2_rndpo.commands", "clean", "-d", str(DATASET_ID), "--delete"],
                   env=env, check=True, capture_output=True)
    assert {p.name for p in proposal_caches(root)} == names | {cache_0.name}


def test_a_second_run_of_a_training_fold_is_refused_and_the_first_finishes(folds):
    root, env = folds
    trainer = "nnUNetTrainerDPO"
    folder = fold_folder(root, trainer, 0)
    config = {**env, "nnUNet_rndpo_config": write_config(root, "dpo", base_trainer=BASE_TRAINER,
                                                         **{**SCHEDULE, "num_epochs": 2})}
    log_first = root / "first.log"
    first = start(train_command(0, trainer), config, log_first)
    deadline = time.monotonic() + 300
    while not (folder / LOCK_FILE).is_file():
        assert first.poll() is None and time.monotonic() < deadline, log_first.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGSTOP)  # the first run holds the fold; keep it there while the second starts
    try:
        second = subprocess.run(train_command(0, trainer), env=config, capture_output=True, text=True, timeout=300)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode != 0
    assert f"Another run is training this fold: pid {first.pid} on host" in second.stderr
    assert "Wait for it to finish" in second.stderr
    finish(first, log_first)
    rows = [json.loads(r) for r in (folder / "rndpo_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # one run's rows, not two
    assert len(list(folder.glob("training_log_*.txt"))) == 1  # the refused run removed the log it had started
    assert not (folder / LOCK_FILE).exists()


def test_a_failed_rerun_leaves_a_finished_fold_byte_identical(folds):
    root, env = folds
    folder = fold_folder(root, "nnUNetTrainerRNDPO", 0)  # finished in the first test
    before = snapshot(folder)
    other = write_config(root, "rerun", base_trainer=BASE_TRAINER, beta=2.0, **SCHEDULE)
    result = run(["nnUNetv2_train", *train_command(0)[1:]], env, expect_ok=False, nnUNet_rndpo_config=other)
    assert result.returncode != 0 and "this fold of nnUNetTrainerRNDPO has finished" in result.stderr
    assert "--c" in result.stderr and "overwrite_finished_fold" in result.stderr
    assert snapshot(folder) == before

    # asked to overwrite, a run that fails while preparing (no pool case gives a pair) still leaves the
    # fold's RN-DPO files as they were: they are written only once preparing has succeeded
    failing = write_config(root, "rerun_failing", base_trainer=BASE_TRAINER, overwrite_finished_fold=True,
                           mining_min_region=10**6, **SCHEDULE)
    result = run(["nnUNetv2_train", *train_command(0)[1:]], env, expect_ok=False, nnUNet_rndpo_config=failing)
    assert result.returncode != 0 and "No preference pairs" in result.stderr
    after = snapshot(folder)
    for name in ("rndpo_config.json", "rndpo_reference.pth", "rndpo_pairs.json", "rndpo_metrics.jsonl",
                 "checkpoint_final.pth"):
        assert after[name] == before[name], name


def test_a_named_variant_trains_into_its_own_folder_and_predicts_and_folds_ensemble(folds):
    root, env = folds
    variants = root / "variants"
    variants.mkdir()
    (variants / "short.json").write_text(json.dumps({**SCHEDULE, "base_trainer": BASE_TRAINER, "num_proposals": 4,
                                                     "beta": 1.0}))
    env = {**env, "nnUNet_rndpo_variants": str(variants)}
    result = run(["nnUNetv2_train", *train_command(0, "nnUNetTrainerRNDPO_short")[1:]], env)
    folder = fold_folder(root, "nnUNetTrainerRNDPO_short", 0)
    assert json.loads((folder / "rndpo_config.json").read_text())["beta"] == 1.0
    assert (folder / "checkpoint_final.pth").is_file() and "reusing proposals" in result.stdout  # fold 0's cache
    assert (fold_folder(root, "nnUNetTrainerRNDPO", 0) / "checkpoint_final.pth").is_file()  # the preset's fold stays
    for trainer, folds_used in (("nnUNetTrainerRNDPO_short", ["0"]), ("nnUNetTrainerRNDPO", ["0", "1"])):
        out = root / f"predictions_{trainer}"
        run(["nnUNetv2_predict", "-i", str(root / "raw" / DATASET / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID),
             "-c", "2d", "-f", *folds_used, "-tr", trainer, "-device", "cpu", "-npp", "0", "-nps", "0",
             "--disable_progress_bar"], env)
        assert len(list(out.glob("*.png"))) == 3
