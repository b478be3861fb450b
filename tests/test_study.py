"""The study runner's arms and report (fast tier; the runner itself runs in tests/test_e2e_study.py)."""

import json

import numpy as np
import pytest

from nnunetv2_rndpo.metrics import curve_summary
from nnunetv2_rndpo.study import Study, main, read_arm_metrics
from nnunetv2_rndpo.study_protocol import SCALES, arms_for
from nnunetv2_rndpo.study_report import arm_table, write_study_report


def _arm(method, judge, mining, curve, drift=None):
    arm = {"method": method, "judge": judge, "mining": mining, "curve": curve,
           "iterations": [20 * i for i in range(len(curve))], "summary": curve_summary(curve)}
    return arm if drift is None else {**arm, "drift": drift}


def _results():
    seeds = {}
    for seed, shift in (("0", 0.0), ("1", 0.02)):
        seeds[seed] = {"arms": {
            "control (continued supervised)": _arm("control (continued supervised)", None, "top_bottom",
                                                   [0.80 + shift, 0.81 + shift, 0.81 + shift]),
            "RN-DPO | oracle | top_bottom": _arm("RN-DPO", "oracle", "top_bottom",
                                                 [0.80 + shift, 0.82 + shift, 0.84 + shift],
                                                 drift=[0.01, 0.03 + shift]),
            "RN-DPO | oracle | top_random": _arm("RN-DPO", "oracle", "top_random",
                                                 [0.80 + shift, 0.79 + shift, 0.81 + shift]),
        }, "judges": {"oracle": {"spearman/pooled": 1.0, "pairwise/accuracy": 1.0}}}
    return {"dataset": "hippocampus", "configuration": "3d_fullres", "scale": "cpu", "seeds": seeds,
            "full_label": {"dice": 0.90}, "protocol": {"num_labeled": 10}}


def test_arms_cover_the_protocol():
    names = [a.name for a in arms_for(("oracle", "weak", "agreement", "learned"), full=False)]
    assert names[0] == "control (continued supervised)" and len(names) == len(set(names))
    for judge in ("oracle", "weak"):
        for method in ("DPO", "RN-DPO"):
            assert {f"{method} | {judge} | top_bottom", f"{method} | {judge} | top_random"} <= set(names)
    assert "RN-DPO + sft | oracle | top_bottom" in names and "pseudo-label | oracle | top_bottom" in names
    full = [a.name for a in arms_for(("oracle", "agreement"), full=True)]
    assert "RN-DPO + sft | agreement | top_bottom" in full and "DPO | agreement | top_random" in full
    # the supervised anchor is pinned per arm (a changed config default must not change an arm):
    # off for DPO and RN-DPO, on for "+ sft" and pseudo-label (self-training with its labeled batches)
    sft = {a.name: a.overrides.get("sft_weight") for a in arms_for(("oracle",), full=False)}
    assert sft["DPO | oracle | top_bottom"] == sft["RN-DPO | oracle | top_random"] == 0
    assert sft["RN-DPO + sft | oracle | top_bottom"] == sft["pseudo-label | oracle | top_bottom"] == 1


def test_gap_share_and_tables(tmp_path):
    results = _results()
    rows = {r["arm"]: r for r in arm_table(results)}
    tb = rows["RN-DPO | oracle | top_bottom"]
    # seed 0: sustained = mean(0.82, 0.84)... last half of 2 points = [0.84]; (0.84 − 0.80) / (0.90 − 0.80)
    assert tb["gap_share"][0] == pytest.approx(0.4)
    assert tb["gap_share"][1] == pytest.approx((0.86 - 0.82) / (0.90 - 0.82))
    assert rows["RN-DPO | oracle | top_random"]["worst_drop"] == pytest.approx([0.01, 0.01])
    report = write_study_report([results], tmp_path / "results.md", tmp_path / "figures")
    text = report.read_text()
    assert "| RN-DPO | oracle | top_bottom | 2 |" in text and "full-label upper bound: 0.9000" in text
    assert "| control (continued supervised) | – | – |" in text  # one cell per column, no "|" inside a name
    assert "0.4500 ± 0.0707" in text  # gap share over two seeds: 0.4 and 0.5
    assert (tmp_path / "figures" / "hippocampus_oracle.png").stat().st_size > 1000
    # drift: mean guard KL over epochs per seed (0.02, 0.03), then mean ± sd; arms without it show "-"
    assert tb["drift"] == pytest.approx([0.02, 0.03])
    assert "| 0.0250 ± 0.0071 |" in text and rows["RN-DPO | oracle | top_random"]["drift"] == []


def test_an_arm_run_on_fewer_seeds_is_in_the_table_not_in_the_figure(tmp_path):
    from nnunetv2_rndpo.study_report import plot_judge_curves

    results = _results()
    results["seeds"]["0"]["arms"]["pseudo-label (no sft) | oracle | top_bottom"] = _arm(
        "pseudo-label (no sft)", "oracle", "top_bottom", [0.80, 0.81, 0.81])
    text = write_study_report([results], tmp_path / "results.md", tmp_path / "figures").read_text()
    assert "| pseudo-label (no sft) | oracle | top_bottom | 1 | 0.8100 |" in text
    drawn = plot_judge_curves(results, "oracle", tmp_path / "oracle.png")
    assert "RN-DPO | oracle | top_bottom" in drawn and "pseudo-label (no sft) | oracle | top_bottom" not in drawn


def test_arm_metrics_from_the_trainer_files(tmp_path):
    rows = [{"epoch": 0, "eval/dice": 0.8}, {"epoch": 1, "guard/kl": 0.01, "eval/dice": 0.82},
            {"epoch": 2, "guard/kl": 0.02}]
    (tmp_path / "rndpo_metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "rndpo_pairs.json").write_text(json.dumps({"pairs": [{}, {}, {}]}))
    assert read_arm_metrics(tmp_path) == {"curve": [0.8, 0.82], "drift": [0.01, 0.02], "pairs": 3}


def test_arm_metrics_keep_the_dice_of_every_test_case_beside_the_curve(tmp_path):
    rows = [{"epoch": 0, "eval/dice": 0.8, "eval/dice_per_case": {"a": 0.7, "b": 0.9}},
            {"epoch": 1, "guard/kl": 0.01, "eval/dice": 0.85, "eval/dice_per_case": {"a": 0.8, "b": 0.9}},
            {"epoch": 2, "guard/kl": 0.02}]
    (tmp_path / "rndpo_metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    metrics = read_arm_metrics(tmp_path)
    assert metrics["curve"] == [0.8, 0.85]
    assert metrics["curve_per_case"] == [{"a": 0.7, "b": 0.9}, {"a": 0.8, "b": 0.9}]


def test_report_from_finished_folders(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(_results()))
    main(["--report-from", str(tmp_path / "a"), "--report-to", str(tmp_path / "docs" / "results.md")])
    assert "hippocampus (3d_fullres, scale cpu, 10 labels)" in (tmp_path / "docs" / "results.md").read_text()
    # a committed results file works too; anything else is named
    main(["--report-from", str(tmp_path / "a" / "results.json"), "--report-to", str(tmp_path / "r2.md")])
    assert "hippocampus (3d_fullres, scale cpu, 10 labels)" in (tmp_path / "r2.md").read_text()
    with pytest.raises(FileNotFoundError, match="no study folder"):
        main(["--report-from", str(tmp_path / "missing"), "--report-to", str(tmp_path / "r3.md")])
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a study's results.json"):
        main(["--report-from", str(tmp_path / "other.json"), "--report-to", str(tmp_path / "r3.md")])


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--source"):
        Study("hippocampus", str(tmp_path / "missing"), "cpu", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown --scale"):
        Study("synthetic", None, "huge", tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"dataset": "hc18", "seeds": {}}))
    with pytest.raises(ValueError, match="hc18"):
        Study("synthetic", None, "smoke", tmp_path / "other")
    assert set(SCALES) == {"cpu", "gpu", "cpu2", "cpu2lean", "gpu2", "smoke", "smoke2"}


def test_full_label_dataset_links_pool_labels(tmp_path):
    from nnunetv2_rndpo.study import full_label_dataset

    source = tmp_path / "raw" / "Dataset960_HippocampusStudySeed0"
    for folder, names in (("imagesTr", ["a_0000"]), ("labelsTr", ["a"]), ("imagesUnlabeled", ["b_0000", "c_0000"]),
                          ("labelsUnlabeled", ["b", "c"]), ("imagesTs", ["t_0000"]), ("labelsTs", ["t"])):
        (source / folder).mkdir(parents=True)
        for name in names:
            (source / folder / f"{name}.nii.gz").write_bytes(b"x")
    (source / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "numTraining": 1, "labels": {}}))
    full = full_label_dataset(source, tmp_path / "raw", 1010)
    assert sorted(p.name for p in (full / "labelsTr").iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert sorted(p.name for p in (full / "imagesTs").iterdir()) == ["t_0000.nii.gz"]
    assert json.loads((full / "dataset.json").read_text())["numTraining"] == 3
    assert (full / "labelsTr" / "b.nii.gz").resolve() == (source / "labelsUnlabeled" / "b.nii.gz").resolve()
    (source / "labelsUnlabeled" / "b.nii.gz").unlink()
    (source / "labelsUnlabeled" / "c.nii.gz").unlink()
    (source / "labelsUnlabeled").rmdir()
    with pytest.raises(FileNotFoundError, match="labelsUnlabeled"):
        full_label_dataset(source, tmp_path / "raw", 1011)


def test_every_toolkit_command_names_the_proposals_the_arms_train_on(tmp_path):
    """The proposal settings name the cache: the judge, the learned judge and the arms must all ask for the
    proposals that ``nnUNetv2_rndpo_proposals`` made, or they look in an empty cache."""
    from nnunetv2_rndpo.commands import judge_parser, proposals_parser, train_judge_parser
    from nnunetv2_rndpo.study_protocol import PROPOSALS

    args = Study("synthetic", None, "smoke", tmp_path / "out")._base_args(980)
    parsed = [proposals_parser().parse_args(args), judge_parser().parse_args([*args, "--judge", "oracle"]),
              train_judge_parser().parse_args(args)]
    for p in parsed:
        assert (p.n, p.sources, p.seed) == \
            (PROPOSALS["num_proposals"], PROPOSALS["proposal_sources"], PROPOSALS["seed"])
        assert (p.f, p.tr) == (["all"], SCALES["smoke"].base_trainer)


def test_report_says_how_much_of_the_protocol_is_done(tmp_path):
    results = _results()
    results["protocol"] = {"num_labeled": 10, "judges": ["oracle"], "full_arms": False, "seeds": [0, 1, 2]}
    text = write_study_report([results], tmp_path / "r.md", tmp_path / "f").read_text()
    expected = len(arms_for(("oracle",), False))
    assert (f"Protocol INCOMPLETE: seed 0: 3/{expected} arms; seed 1: 3/{expected} arms; "
            f"seed 2: 0/{expected} arms") in text


def test_completeness_counts_protocol_arms_only():
    from nnunetv2_rndpo.study_protocol import sweep_arms
    from nnunetv2_rndpo.study_report import _completeness

    protocol = {"judges": ["oracle"], "full_arms": False, "seeds": [0, 1]}
    names = [a.name for a in arms_for(("oracle",), full=False)]
    sweep = [a.name for a in sweep_arms()]
    assert sweep and not set(sweep) & set(names)
    for arm in sweep_arms():  # β above the protocol's, pseudo-label without its supervised anchor, random patches,
        # the split batch
        assert (arm.overrides.get("beta", 0) > 1 or arm.overrides.get("disagreement_oversample") == 0
                or (arm.method.startswith("pseudo-label") and arm.overrides["sft_weight"] == 0)
                or arm.overrides.get("sft_batch_fraction") == 0.5)
    seed = {"arms": {n: {} for n in names + sweep}}
    results = {"protocol": protocol, "seeds": {"0": seed, "1": {"arms": {names[0]: {}}}}}
    text = _completeness(results)
    assert text.startswith("Protocol INCOMPLETE") and f"seed 0: {len(names)}/{len(names)}" in text
    assert f"seed 1: 1/{len(names)}" in text and "full-label model missing" in text
    results["seeds"]["1"] = seed
    results["full_label"] = {"dice": 0.9}
    assert _completeness(results).startswith("Protocol complete")  # the extra sweep arms do not count


def test_report_has_the_beta_table_the_default_was_set_from(tmp_path):
    from nnunetv2_rndpo.config import DEFAULT_BETA
    from nnunetv2_rndpo.study_protocol import PROTOCOL_BETA

    results = _results()
    assert "β sweep" not in write_study_report([results], tmp_path / "a.md", tmp_path / "f").read_text()  # no sweep arm
    results["seeds"]["0"]["arms"]["RN-DPO (β 4) | oracle | top_bottom"] = _arm(
        "RN-DPO (β 4)", "oracle", "top_bottom", [0.80, 0.81, 0.805], drift=[0.004, 0.006])
    text = write_study_report([results], tmp_path / "b.md", tmp_path / "f").read_text()
    assert f"default β for `region` is {DEFAULT_BETA['region']:g}" in text
    # the protocol's RN-DPO row (both seeds) at its pinned β, then the swept β (one seed): Δ sustained, drop, drift
    assert f"| oracle | RN-DPO | {PROTOCOL_BETA['region']:g} | 2 |" in text
    assert "| oracle | RN-DPO | 4 | 1 | 0.0050 | -0.0050 | 0.0050 |" in text  # sustained 0.805, lowest 0.805
    # every protocol DPO/RN-DPO arm pins β, so a default change cannot alter what the committed rows mean
    for arm in arms_for(("oracle", "weak"), full=True):
        if arm.method in ("DPO", "RN-DPO", "RN-DPO + sft"):
            assert arm.overrides["beta"] == PROTOCOL_BETA["none" if arm.method == "DPO" else "region"]


def test_a_second_label_budget_gets_its_own_folder_and_report_section(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        Study("synthetic", None, "smoke", tmp_path / "out", labeled=0)
    study = Study("synthetic", None, "smoke", tmp_path / "n4", labeled=4)
    assert study.scale.num_labeled == 4 and study.results["protocol"]["num_labeled"] == 4
    study._save()
    with pytest.raises(ValueError, match="4 labeled cases, not 8; use another -o"):
        Study("synthetic", None, "smoke", tmp_path / "n4")  # the scale's own budget into the N = 4 folder
    main_budget, second = _results(), _results()
    second["protocol"] = {"num_labeled": 20}
    text = write_study_report([main_budget, second], tmp_path / "r.md", tmp_path / "figures").read_text()
    assert "hippocampus (3d_fullres, scale cpu, 10 labels)" in text and "(3d_fullres, scale cpu, 20 labels)" in text
    assert {p.name for p in (tmp_path / "figures").iterdir()} == \
        {"hippocampus_oracle.png", "hippocampus_n20_oracle.png"}
    round2 = {**_results(), "scale": "cpu2", "protocol": {"num_labeled": 20, "protocol_round": 2}}  # same budget
    write_study_report([second, round2], tmp_path / "r2.md", tmp_path / "figures2")
    assert {p.name for p in (tmp_path / "figures2").iterdir()} == \
        {"hippocampus_n20_oracle.png", "hippocampus_n20_cpu2_oracle.png"}


def test_report_bins_runs_by_their_largest_drift():
    from nnunetv2_rndpo.study_report import _drift_lines

    results = _results()  # RN-DPO top_bottom: largest KL 0.03 (seed 0) and 0.05 (seed 1), both gained 0.04
    results["seeds"]["0"]["arms"]["DPO | oracle | top_bottom"] = _arm("DPO", "oracle", "top_bottom",
                                                                    [0.80, 0.79, 0.78], drift=[0.001, 0.004])
    text = "\n".join(_drift_lines(results))
    assert "| [0.0025, 0.005) | 1 | 0 | -0.0200 |" in text  # the DPO run: KL 0.004, lost 0.02
    assert "| [0.02, 0.05) | 1 | 1 | 0.0400 |" in text and "| [0.05, inf) | 1 | 1 | 0.0400 |" in text
    assert "control" not in text and _drift_lines({"seeds": {}}) == []


def test_weak_judge_is_calibrated_on_pair_accuracy_and_uncertainty_is_always_reported(tmp_path, monkeypatch):
    from nnunetv2_rndpo.commands import judge_parser
    from nnunetv2_rndpo.study_protocol import WEAK_SIZE_BIAS, WEAK_TARGET_PAIR_ACCURACY

    study = Study("synthetic", None, "cpu", tmp_path / "out")
    assert study.report_judges == ("oracle", "weak", "agreement", "learned", "uncertainty")
    commands = []
    monkeypatch.setattr(study, "_run", lambda name, command, folder, **env: commands.append(command))
    monkeypatch.setattr(study, "_raw", lambda did: tmp_path)
    (tmp_path / "out" / "seed_0").mkdir(parents=True)
    (tmp_path / "out" / "seed_0" / "scores_weak.report.json").write_text("{}")  # judge_scores reads it back
    study.judge_scores(0, "weak")
    assert not commands  # cached: not made again
    (tmp_path / "out" / "seed_0" / "scores_weak.report.json").unlink()
    with pytest.raises(FileNotFoundError):
        study.judge_scores(0, "weak")
    args = judge_parser().parse_args(commands[0][1:])
    assert (args.judge, args.pair_accuracy, args.size_bias, args.judge_sigma) == (
        "oracle", WEAK_TARGET_PAIR_ACCURACY, WEAK_SIZE_BIAS, 0.0)


def test_judge_table_lists_judges_in_a_fixed_order_with_the_three_rank_measures(tmp_path):
    results = _results()
    for judge in ("learned", "uncertainty", "agreement", "weak"):
        results["seeds"]["0"]["judges"][judge] = {"spearman/pooled": 0.5, "spearman/per_case": 0.1,
                                                  "pairwise/accuracy": 0.6}
    text = write_study_report([results], tmp_path / "r.md", tmp_path / "f").read_text()
    table = text[text.index("Judge reliability"):]
    assert "| judge | spearman/pooled | spearman/per_case | pairwise/accuracy |" in table
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "judge" not in line]
    assert rows[:5] == ["oracle", "weak", "agreement", "uncertainty", "learned (ranking_net, 1 seed)"]


def test_the_committed_study_results_make_a_report(tmp_path):
    from pathlib import Path

    from nnunetv2_rndpo.study_report import load_results

    files = sorted((Path(__file__).resolve().parents[1] / "docs" / "results").glob("study_*.json"))
    text = write_study_report([load_results(f) for f in files], tmp_path / "r.md", tmp_path / "f").read_text()
    assert text.count("Judge reliability on the pool") == len(files)
    # the first round kept no per-case Dice: its comparisons give Δ and sign counts, no interval, no claim
    rows = [line for line in text.splitlines() if line.startswith("| RN-DPO, top_bottom | DPO, top_bottom |")]
    assert len(rows) == 3 * text.count("Paired comparisons, judge") > 0
    assert all("no per-case Dice" in line and line.endswith("| – |") for line in rows)


def test_proposal_arms_pair_the_protocol_proposals_with_another_set(tmp_path):
    from nnunetv2_rndpo.study_protocol import DEFAULT_STEP, PROPOSALS, proposal_arms

    today, other = proposal_arms("learned", ("affine", "mirror"))
    assert today.judge == other.judge == "learned" and today.name != other.name
    assert "proposal_sources" not in today.overrides and other.overrides["proposal_sources"] == ["affine", "mirror"]
    for arm in (today, other):
        assert {k: arm.overrides[k] for k in DEFAULT_STEP} == DEFAULT_STEP
    study = Study("synthetic", None, "smoke", tmp_path / "out")

    def sources(args: list[str]) -> list[str]:
        return args[args.index("--sources") + 1:args.index("--seed")]

    assert sources(study._base_args(980, other.overrides["proposal_sources"])) == ["affine", "mirror"]
    assert sources(study._base_args(980)) == PROPOSALS["proposal_sources"]


def _with_per_case(results, shifts):
    """Per-case Dice for every arm of ``_results()``: 10 test cases around the curve, RN-DPO top_bottom ahead of
    the others by ``shifts[seed]`` on every case after the base."""
    cases = [f"case_{i}" for i in range(10)]
    for seed, record in results["seeds"].items():
        for name, arm in record["arms"].items():
            ahead = shifts[seed] if name == "RN-DPO | oracle | top_bottom" else 0.0
            arm["curve_per_case"] = [{c: d + 0.01 * (i - 4.5) + (ahead if t else 0.0) for i, c in enumerate(cases)}
                                     for t, d in enumerate(arm["curve"])]
            arm["curve"] = [float(np.mean(list(r.values()))) for r in arm["curve_per_case"]]
    return results


def test_report_has_a_paired_comparison_table_per_judge_with_intervals_and_sign_counts(tmp_path):
    from nnunetv2_rndpo.study_report import compared_arms

    results = _results()
    for record in results["seeds"].values():  # the same curves as the control: RN-DPO leads by its shift
        control = record["arms"]["control (continued supervised)"]
        record["arms"]["DPO | oracle | top_bottom"] = _arm("DPO", "oracle", "top_bottom", control["curve"])
        record["arms"]["RN-DPO | oracle | top_bottom"]["curve"] = list(control["curve"])
    results = _with_per_case(results, {"0": 0.02, "1": 0.03})
    results["seeds"]["0"]["self_training"] = {"tta": {"dice": 0.9, "dice_per_case": {
        f"case_{i}": 0.9 for i in range(10)}, "seconds": {"total": 100}}}
    assert compared_arms(results, "oracle") == [  # DPO top_random, pseudo-label, RN-DPO + sft: not run
        ("RN-DPO | oracle | top_bottom", "DPO | oracle | top_bottom"),
        ("RN-DPO | oracle | top_bottom", "control (continued supervised)"),
        ("RN-DPO | oracle | top_bottom", "self-training (tta)")]
    text = write_study_report([results], tmp_path / "r.md", tmp_path / "f", resamples=300).read_text()
    assert "Paired comparisons, judge oracle" in text and "300 resamples" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| RN-DPO, top_bottom | DPO, top_bottom | sustained |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-4:] == ["+0.0250", "[+0.0200, +0.0300]", "2/2", "held"]
    # self-training ran on seed 0 only: one seed, a flat curve
    row = next(line for line in text.splitlines() if "| self-training (tta) | final |" in line)
    assert "1/1" in row and "held" in row


def test_old_results_without_per_case_dice_say_so_instead_of_an_interval(tmp_path):
    results = _results()
    for record in results["seeds"].values():
        control = record["arms"]["control (continued supervised)"]
        record["arms"]["DPO | oracle | top_bottom"] = _arm("DPO", "oracle", "top_bottom", control["curve"])
    text = write_study_report([results], tmp_path / "r.md", tmp_path / "f").read_text()
    row = next(line for line in text.splitlines()
               if line.startswith("| RN-DPO, top_bottom | DPO, top_bottom | final |"))
    assert row == "| RN-DPO, top_bottom | DPO, top_bottom | final | +0.0300 | no per-case Dice | 2/2 | – |"


def _finished_arm(dice):
    return _arm("RN-DPO", "oracle", "top_bottom", [0.8, dice])


def test_two_studies_on_one_folder_keep_each_others_arms_seeds_and_full_label(tmp_path):
    first, second = Study("synthetic", None, "smoke", tmp_path), Study("synthetic", None, "smoke", tmp_path)
    first.results["seeds"]["0"] = {"arms": {"A": _finished_arm(0.81)}, "judges": {"oracle": {"x": 1}}}
    first._save()
    second.results["seeds"]["0"] = {"arms": {"B": _finished_arm(0.82)}, "judges": {}}
    second.results["seeds"]["1"] = {"arms": {"C": _finished_arm(0.83)}, "judges": {}}
    second._save()
    first.results["seeds"]["0"]["arms"]["D"] = _finished_arm(0.84)  # a run keeps adding to the record it holds
    first.results["full_label"] = {"dice": 0.9}
    first._save()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["seeds"]["0"]["arms"]) == {"A", "B", "D"} and set(saved["seeds"]["1"]["arms"]) == {"C"}
    assert saved["seeds"]["0"]["judges"] == {"oracle": {"x": 1}} and saved["full_label"] == {"dice": 0.9}
    assert saved["seeds"]["0"]["arms"]["B"]["curve"] == [0.8, 0.82]
    assert first.results["seeds"] == saved["seeds"]  # the run now knows the other's arms and skips them


def _save_arms(folder, prefix, count):
    study = Study("synthetic", None, "smoke", folder)
    for i in range(count):
        study.results["seeds"].setdefault("0", {"arms": {}, "judges": {}})["arms"][f"{prefix}{i}"] = _finished_arm(0.8)
        study._save()


def test_concurrent_saves_lose_no_arm(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    runs = [context.Process(target=_save_arms, args=(tmp_path, prefix, 25)) for prefix in ("x", "y", "z")]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    assert [run.exitcode for run in runs] == [0, 0, 0]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["seeds"]["0"]["arms"]) == {f"{p}{i}" for p in "xyz" for i in range(25)}
