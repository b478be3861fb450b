"""The ``nnUNetv2_rndpo_*`` commands on a tiny synthetic 2D dataset (slower tier, ``-m e2e``).

One session fixture copies the session's planned dataset and tiny base model (conftest.py) and fills the
proposal cache in two parts; the tests judge, report, mine, train the learned judge and finally train the RN-DPO
trainer from the cache and the mined pairs. The commands run as ``python -m nnunetv2_rndpo.commands`` (the console
scripts are the same functions).
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import private_copy
from test_e2e_trainer import run

from nnunetv2_rndpo.paths import results_folder, rndpo_cache_folder

pytestmark = pytest.mark.e2e
DATASET = "Dataset991_Tiny2D"  # the session's tiny 2D dataset (conftest.py)
BASE = ["-d", "991", "-c", "2d", "-tr", "nnUNetTrainer_rndpoSmoke", "-n", "4", "--quiet", "-device", "cpu"]


def command(env: dict, name: str, *args: str, expect_ok: bool = True, base=BASE) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nnunetv2_rndpo.commands", name, *base, *args], env=env,
                            capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def proposals_root(preprocessed: Path) -> Path:
    return rndpo_cache_folder(preprocessed, DATASET, "nnUNetPlans", "2d") / "proposals"


def base_fold(root: Path) -> Path:
    return results_folder(root / "results", DATASET, "nnUNetTrainer_rndpoSmoke", "nnUNetPlans", "2d", 0)


@pytest.fixture(scope="session")
def toolkit(tiny2d_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("toolkit")
    env = private_copy(tiny2d_base, root)  # this module's own copy of the dataset and its base model
    parts = [command(env, "proposals", "-num_parts", "2", "-part_id", str(i)).stdout for i in (0, 1)]
    (cache,) = [p for p in proposals_root(root / "preprocessed").iterdir() if p.is_dir()]
    return root, env, cache, parts


def read_csv(path: Path) -> dict[tuple[str, int], float]:
    with open(path) as f:
        return {(r["case_id"], int(r["proposal"])): float(r["score"]) for r in csv.DictReader(f)}


def ranking(scores: dict[tuple[str, int], float], case: str) -> list[int]:
    return sorted(range(4), key=lambda k: scores[(case, k)])


def test_two_parts_fill_the_same_cache_as_one_run(toolkit):
    root, env, cache, parts = toolkit
    assert "3/6 pool cases" in parts[0] and "(other parts still missing)" in parts[0]
    assert "6/6 pool cases" in parts[1] and (cache / "manifest.json").is_file()
    assert "reusing proposals" in command(env, "proposals", "-num_parts", "2", "-part_id", "0").stdout
    single = root / "single"
    shutil.copytree(root / "preprocessed", single, ignore=shutil.ignore_patterns("rndpo"))
    command({**env, "nnUNet_preprocessed": str(single)}, "proposals")
    (one_run,) = [p for p in proposals_root(single).iterdir() if p.is_dir()]
    assert one_run.name == cache.name
    assert json.loads((one_run / "manifest.json").read_text()) == json.loads((cache / "manifest.json").read_text())
    for case_file in sorted(cache.glob("*.npz")):
        with np.load(case_file) as a, np.load(one_run / case_file.name) as b:
            assert np.array_equal(a["masks"], b["masks"]) and np.array_equal(a["probabilities"], b["probabilities"])


def test_oracle_without_noise_ranks_by_true_dice(toolkit):
    root, env, cache, _ = toolkit
    out = root / "oracle0.csv"
    stdout = command(env, "judge", "--judge", "oracle", "--report", "-o", str(out)).stdout
    assert "pairwise/accuracy" in stdout
    report = json.loads((root / "oracle0.report.json").read_text())
    assert report["pairwise/accuracy"] == 1.0 and report["top1/regret"] == 0.0
    assert report["spearman/pooled"] == pytest.approx(1.0)
    assert all(report[f"mining/{m}/oracle_acc"] in (1.0, None) for m in ("top_bottom", "margin", "adjacent"))


def test_oracle_with_large_noise_is_unreliable_and_seeded(toolkit):
    root, env, _, _ = toolkit
    command(env, "judge", "--judge", "oracle", "--judge-sigma", "10", "--report", "-o", str(root / "noisy.csv"))
    assert json.loads((root / "noisy.report.json").read_text())["pairwise/accuracy"] < 0.9
    command(env, "judge", "--judge", "oracle", "--judge-sigma", "10", "-o", str(root / "noisy2.csv"))
    assert read_csv(root / "noisy.csv") == read_csv(root / "noisy2.csv")


def test_oracle_calibrated_to_a_pair_accuracy_records_its_sigma(toolkit):
    root, env, _, _ = toolkit
    command(env, "judge", "--judge", "oracle", "--pair-accuracy", "0.7", "--size-bias", "0.05", "--report",
            "-o", str(root / "weak.csv"))
    report = json.loads((root / "weak.report.json").read_text())
    assert report["judge/target_pair_accuracy"] == 0.7 and report["judge/size_bias"] == 0.05
    # either noise was needed to get down to 0.7, or the size bias alone already made the judge that weak
    assert report["judge/sigma"] > 0 or report["pairwise/accuracy"] <= 0.7
    bad = command(env, "judge", "--judge", "oracle", "--pair-accuracy", "0.4", expect_ok=False)
    assert bad.returncode == 2 and "--pair-accuracy must be in (0.5, 1]" in bad.stderr


@pytest.mark.parametrize("judge", ["agreement", "uncertainty"])
def test_label_free_judges_write_the_trainers_csv(toolkit, judge):
    root, env, cache, _ = toolkit
    command(env, "judge", "--judge", judge)
    scores = read_csv(base_fold(root) / f"rndpo_scores_{judge}.csv")  # the default: per fold, not in the cache
    assert len(scores) == 6 * 4 and all(0 <= s <= 1 for s in scores.values())


def test_learned_judge_trains_and_reports(toolkit):
    import torch

    root, env, cache, _ = toolkit
    stdout = command(env, "train_judge", "--weight-noise", "0.1").stdout  # the default model: boundary profiles
    judge_file = base_fold(root) / "rndpo_judge.pth"
    assert judge_file.is_file() and "val/pairwise/accuracy" in stdout and "val/agreement/pairwise/accuracy" in stdout
    saved = torch.load(judge_file, weights_only=False)
    assert saved["format"] == "boundary-profile-1" and saved["training"]["model"] == "boundary_profile"
    # the 2 validation cases held out; 6 training cases' label moves and predictions ranked in pairs
    assert saved["metrics"]["val/cases"] == 2 and saved["metrics"]["val/held_out"] == 1
    assert saved["metrics"]["train/pairs"] > 6 and list(saved["training"]["weight_noise"]) == [0.1]
    net_file = base_fold(root) / "judge_ranking_net.pth"
    command(env, "train_judge", "--model", "ranking_net", "--epochs", "3", "--samples-per-case", "4", "--crop-size",
            "32", "--width", "4", "--weight-noise", "0.1", "-o", str(net_file))
    saved = torch.load(net_file, weights_only=False)
    # 6 training cases x 3 epochs (a step whose masks all agree is skipped)
    assert saved["format"] == "within-case-ranking-1" and 0 < saved["metrics"]["train/steps"] <= 18
    label_only = base_fold(root) / "judge_label_only.pth"  # trained on the labels alone: no predictions made
    command(env, "train_judge", "--training-masks", "label", "-o", str(label_only))
    assert torch.load(label_only, weights_only=False)["training"]["masks"] == "label"
    command(env, "judge", "--judge", "learned", "--report")
    report = json.loads((base_fold(root) / "rndpo_scores_learned.report.json").read_text())
    assert {"spearman/per_case", "pairwise/accuracy", "top1/regret", "mining/quantile/oracle_acc"} <= set(report)
    assert report["judge/learned_model"] == "boundary_profile"


def test_external_scores_are_validated_and_normalised(toolkit):
    root, env, _, _ = toolkit
    command(env, "judge", "--judge", "oracle", "-o", str(root / "qc.csv"))
    raw = read_csv(root / "qc.csv")
    lines = ["case_id,proposal,score"] + [f"{c},{k},{10 * s + 3}" for (c, k), s in raw.items()]
    (root / "qc_scaled.csv").write_text("\n".join(lines) + "\n")
    command(env, "judge", "--judge", "external", "--scores", str(root / "qc_scaled.csv"), "--normalize", "case_minmax",
            "-o", str(root / "qc_norm.csv"))
    normalised = read_csv(root / "qc_norm.csv")
    for case in {c for c, _ in raw}:
        assert ranking(normalised, case) == ranking(raw, case) and max(normalised[(case, k)] for k in range(4)) == 1.0
    (root / "qc_bad.csv").write_text("\n".join([*lines, "nobody,0,0.5"]) + "\n")
    bad = command(env, "judge", "--judge", "external", "--scores", str(root / "qc_bad.csv"), expect_ok=False)
    assert bad.returncode == 2 and "unknown case 'nobody'" in bad.stderr


def test_reliability_on_labeled_validation_cases(toolkit):
    root, env, cache, _ = toolkit
    stdout = command(env, "judge", "--judge", "uncertainty", "--report-labeled", "-o", str(root / "unc.csv")).stdout
    assert 'label_smoothing "auto" would use eps' in stdout
    report = json.loads((root / "unc.labeled_report.json").read_text())
    assert report["labeled/cases"] == 2 and 0 <= report["labeled/flip_rate"] <= 0.4
    assert (cache.parent.parent / "labeled_proposals" / cache.name / "manifest.json").is_file()


def test_headroom_reports_of_mirror_perturb_and_affine_on_the_pool_and_the_labeled_cases(toolkit):
    root, env, _, _ = toolkit
    copy = root / "headroom"
    shutil.copytree(root / "preprocessed", copy, ignore=shutil.ignore_patterns("rndpo"))
    env = {**env, "nnUNet_preprocessed": str(copy)}
    stdout = command(env, "proposals", "--sources", "mirror", "perturb", "affine", "--perturb-sigma", "0.2",
                     "--report", "--report-labeled").stdout
    assert "headroom/oracle_headroom" in stdout and '"perturb_sigma": 0.2' in stdout
    (cache,) = [p for p in proposals_root(copy).iterdir() if p.is_dir()]
    (labeled,) = [p for p in (rndpo_cache_folder(copy, DATASET, "nnUNetPlans", "2d") / "labeled_proposals").iterdir()]
    fold = base_fold(root)
    for report_file, cases in ((fold / f"rndpo_headroom_{cache.name}.report.json", 6),
                               (fold / f"rndpo_headroom_{labeled.name}.labeled_report.json", 2)):
        report = json.loads(report_file.read_text())
        assert report["headroom/cases"] == cases and report["headroom/proposals"] == 4
        assert report["headroom/forwards_per_case"] == 4 + 2  # 4 flips, then 1 perturb and 1 affine pass
        assert 0 <= report["headroom/plain_dice"] <= 1 and report["headroom/within_case_sd"] >= 0
        assert report["headroom/best_of_k"] >= report["headroom/proposal_dice_mean"]
        assert report["headroom/oracle_headroom"] == pytest.approx(report["headroom/best_of_k"]
                                                                   - report["headroom/plain_dice"])
        if report["headroom/oracle_pairs"]:  # one class: every voxel of D is decidable
            assert report["headroom/chosen_right_where_decidable"] == report["headroom/chosen_right_in_region"]


def test_invalid_inputs_error_clearly(toolkit):
    root, env, _, _ = toolkit
    other_seed = command(env, "judge", "--judge", "agreement", "--seed", "7", expect_ok=False)
    assert other_seed.returncode == 2 and "No current proposals for 6 of 6 pool cases" in other_seed.stderr
    assert "Run nnUNetv2_rndpo_proposals" in other_seed.stderr
    missing = command(env, "mine", "--scores", str(root / "nope.csv"), expect_ok=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_hybrids = command(env, "mine", "--scores", str(root / "nope.csv"), "--mining", "local", expect_ok=False)
    assert no_hybrids.returncode == 2 and "needs --hybrids N" in no_hybrids.stderr
    other_trainer = [a if a != "nnUNetTrainer_rndpoSmoke" else "nnUNetTrainer" for a in BASE]
    no_model = command(env, "proposals", expect_ok=False, base=other_trainer)
    assert no_model.returncode == 2 and "train the base model first" in no_model.stderr


def test_mined_pairs_and_cached_proposals_feed_the_trainer(toolkit):
    root, env, cache, _ = toolkit
    command(env, "judge", "--judge", "oracle", "-o", str(root / "for_mining.csv"))
    pairs_file = root / "pairs.json"
    stdout = command(env, "mine", "--scores", str(root / "for_mining.csv"), "--mining", "margin", "--tau", "0",
                     "--max-pairs-per-case", "2", "-o", str(pairs_file)).stdout
    assert "pairs/oracle_acc" in stdout and "region/size_p50" in stdout
    mined = json.loads(pairs_file.read_text())
    assert mined["statistics"]["pairs/oracle_acc"] == 1.0 and len(mined["pairs"]) <= 12
    # local pairs: hybrids are scored in the same CSV after the 4 proposals, then mined against their anchors
    hybrid_flags = ["--hybrids", "3", "--local-part-voxels", "40", "--local-min-part-voxels", "10"]
    command(env, "judge", "--judge", "oracle", "-o", str(root / "with_hybrids.csv"), *hybrid_flags)
    scored = read_csv(root / "with_hybrids.csv")
    assert {k for _, k in scored} > set(range(4)) and all(k < 7 for _, k in scored)
    pairs_file = root / "local_pairs.json"
    stdout = command(env, "mine", "--scores", str(root / "with_hybrids.csv"), "--mining", "local", "-o",
                     str(pairs_file), *hybrid_flags).stdout
    mined = json.loads(pairs_file.read_text())
    assert mined["statistics"]["pairs/oracle_acc"] == 1.0 and "pairs/chosen_right_where_decidable" in stdout
    assert all(max(p["chosen"], p["rejected"]) >= 4 and 10 <= p["region_size"] <= 40 for p in mined["pairs"])
    printed = json.loads(stdout.rsplit("nnUNet_rndpo_config: ", 1)[1])
    assert printed["mining"] == "local" and printed["mining_max_pairs_per_case"] == 3
    config = root / "from_toolkit.json"
    config.write_text(json.dumps({**printed, "base_trainer": "nnUNetTrainer_rndpoSmoke",
                                  "num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 2,
                                  "guard_num_cases": 0, "label_smoothing": "auto", "loss_type": "robust"}))
    run(["nnUNetv2_train", "991", "2d", "0", "-tr", "nnUNetTrainerRNDPO", "-device", "cpu"], env,
        nnUNet_rndpo_config=str(config))
    fold = results_folder(root / "results", DATASET, "nnUNetTrainerRNDPO", "nnUNetPlans", "2d", 0)
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"reusing proposals from {cache}" in log and "generated proposals" not in log
    assert f"hybrids in {cache}/hybrids_" in log
    written = json.loads((fold / "rndpo_pairs.json").read_text())
    assert written["pairs"] == mined["pairs"]
    epsilon = json.loads((fold / "rndpo_config.json").read_text())["label_smoothing"]
    assert epsilon == written["judge_metrics"]["judge/auto_label_smoothing"] and 0 <= epsilon <= 0.4
    assert os.path.isfile(fold / "checkpoint_final.pth")
