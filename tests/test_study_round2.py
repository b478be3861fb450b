"""The study's second round: weak judges at two levels, the cpu2/gpu2 scales and their arms (fast tier)."""

from pathlib import Path

import numpy as np
import pytest

from nnunetv2_rndpo import study as study_module
from nnunetv2_rndpo.reliability import calibrate_judge_sigma, judge_reliability
from nnunetv2_rndpo.study import STUDY_JUDGES, Study, main, weak_calibrations
from nnunetv2_rndpo.study_protocol import (
    LOCAL_HYBRIDS,
    SCALES,
    WEAK_JUDGES,
    WEAK_SIZE_BIAS,
    WEAK_TARGET_PAIR_ACCURACY,
    protocol_arms,
    round2_arms,
)
from nnunetv2_rndpo.study_report import compared_arms, load_results, write_study_report

RESULTS = Path(__file__).parents[1] / "docs" / "results"


def test_weak_levels_calibrate_to_their_pair_accuracy():
    assert WEAK_JUDGES["weak"] == WEAK_TARGET_PAIR_ACCURACY == 0.70  # the first round's judge is unchanged
    assert WEAK_JUDGES["weak75"] == 0.75 and WEAK_JUDGES["weak62"] == 0.62
    rng = np.random.default_rng(1)
    dice = {f"c{i}": rng.uniform(0.6, 0.9) + rng.normal(0, 0.01, 8) for i in range(40)}
    sizes = {c: rng.uniform(900, 1100, 8) for c in dice}
    sigmas = {}
    for judge, target in WEAK_JUDGES.items():
        sigma = sigmas[judge] = calibrate_judge_sigma(dice, sizes, target, size_bias=WEAK_SIZE_BIAS)
        measured = []
        for seed in range(20):  # drawn as the oracle judge draws it: Dice + size bias + N(0, σ)
            draw = np.random.default_rng(seed)
            scores = {c: dice[c] + WEAK_SIZE_BIAS * (sizes[c] - sizes[c].mean()) / sizes[c].mean()
                      + draw.normal(0, sigma, 8) for c in dice}
            measured.append(judge_reliability(scores, dice)["pairwise/accuracy"])
        assert np.mean(measured) == pytest.approx(target, abs=0.01), judge
    assert sigmas["weak75"] < sigmas["weak"] < sigmas["weak62"]  # less reliable = more noise


def _commands(study, tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(study, "_run", lambda name, command, folder, **env: commands.append(command))
    monkeypatch.setattr(study, "_raw", lambda did: tmp_path)
    return commands


@pytest.mark.parametrize("judge", ["weak75", "weak62"])
def test_each_weak_level_has_its_own_scores_and_target(tmp_path, monkeypatch, judge):
    from nnunetv2_rndpo.commands import judge_parser

    study = Study("synthetic", None, "cpu2", tmp_path / "out")
    assert judge in study.report_judges and judge in STUDY_JUDGES
    commands = _commands(study, tmp_path, monkeypatch)
    (tmp_path / "out" / "seed_0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):  # the stubbed command wrote no report
        study.judge_scores(0, judge)
    args = judge_parser().parse_args(commands[-1][1:])
    assert (args.judge, args.pair_accuracy, args.size_bias, args.hybrids) == ("oracle", WEAK_JUDGES[judge],
                                                                             WEAK_SIZE_BIAS, 0)
    assert args.o == str(tmp_path / "out" / "seed_0" / f"scores_{judge}.csv")
    with pytest.raises(FileNotFoundError):  # local mining: the judge scores the hybrids too, into its own file
        study.judge_scores(0, judge, hybrids=LOCAL_HYBRIDS)
    args = judge_parser().parse_args(commands[-1][1:])
    assert args.hybrids == LOCAL_HYBRIDS and args.o.endswith(f"scores_{judge}__hybrids{LOCAL_HYBRIDS}.csv")


def test_each_weak_level_gets_its_calibration_record():
    reports = {judge: {"judge/target_pair_accuracy": target, "judge/sigma": 0.01 * i, "pairwise/accuracy": target}
               for i, (judge, target) in enumerate(WEAK_JUDGES.items())}
    reports["agreement"] = {"pairwise/accuracy": 0.55}
    reports["weak62"] = {"pairwise/accuracy": 0.6}  # a report from before the target: no calibration record
    records = weak_calibrations(reports)
    assert set(records) == {"weak_calibration", "weak75_calibration"}  # the first round's key is kept for weak
    assert records["weak_calibration"] == {"size_bias": WEAK_SIZE_BIAS, "target_pair_accuracy": 0.70,
                                           "sigma": 0.0, "pair_accuracy": 0.70}
    assert records["weak75_calibration"]["target_pair_accuracy"] == 0.75


def test_cpu2_and_gpu2_scales_run_longer_on_more_seeds():
    cpu, cpu2, gpu, gpu2 = SCALES["cpu"], SCALES["cpu2"], SCALES["gpu"], SCALES["gpu2"]
    for first, second in ((cpu, cpu2), (gpu, gpu2)):
        assert second.num_epochs * second.iterations_per_epoch >= 2 * first.num_epochs * first.iterations_per_epoch
        assert second.num_epochs >= 8  # evaluation points after the base (eval_every = 1)
        assert second.seeds == (0, 1, 2, 3) and second.protocol_round == 2
        assert second.num_validation == 20 and second.tuning and not first.tuning and first.num_validation == 0
        assert second.judges == ("oracle", "weak75", "weak62", "agreement", "uncertainty", "learned")
        assert second.self_training == ("tta", "top_proposal") and first.self_training == ()
        assert (second.base_trainer, second.learning_rate, second.max_pool, second.full_arms) == \
            (first.base_trainer, first.learning_rate, first.max_pool, first.full_arms)
    assert cpu.protocol_round == gpu.protocol_round == 1


def test_cpu2_arms_hold_both_sides_of_every_comparison_without_the_cross_product():
    judges = SCALES["cpu2"].judges
    arms = protocol_arms(judges, False, 2)
    names = [a.name for a in arms]
    assert names == [a.name for a in round2_arms(judges, False)] and len(names) == len(set(names))
    assert names[0] == "control (continued supervised)"
    for judge in judges:  # RN-DPO vs DPO under every judge
        assert {f"RN-DPO | {judge} | top_bottom", f"DPO | {judge} | top_bottom"} <= set(names)
    for judge in ("oracle", "weak62"):  # the mining comparison under the reliable and the least reliable weak judge
        for mining in ("top_random", "local"):
            assert {f"RN-DPO | {judge} | {mining}", f"DPO | {judge} | {mining}"} <= set(names)
    for judge in ("oracle", "agreement"):  # vs pseudo-label, with and without the supervised anchor
        assert {f"RN-DPO + sft | {judge} | top_bottom", f"pseudo-label | {judge} | top_bottom"} <= set(names)
    assert "DPO | weak75 | local" not in names and "pseudo-label | learned | top_bottom" not in names
    assert len(names) < len(protocol_arms(judges, True, 2))  # gpu2 runs the cross product
    local = [a for a in arms if a.mining == "local"]
    assert local and all(a.hybrids == LOCAL_HYBRIDS == a.overrides["mining_max_pairs_per_case"] for a in local)
    assert all(a.hybrids == 0 for a in arms if a.mining != "local")
    # the comparisons the report draws are all present for the judges that have them
    results = {"seeds": {"0": {"arms": {n: {"curve": [0.5, 0.6]} for n in names},
                               "self_training": {"tta": {}, "top_proposal": {}}}}}
    pairs = compared_arms(results, "weak62")
    assert ("RN-DPO | weak62 | local", "DPO | weak62 | local") in pairs
    assert ("RN-DPO | weak62 | top_bottom", "self-training (tta)") in pairs
    assert ("RN-DPO + sft | agreement | top_bottom", "pseudo-label | agreement | top_bottom") in \
        compared_arms(results, "agreement")
    with pytest.raises(ValueError, match="unknown protocol round 3"):
        protocol_arms(judges, False, 3)


def test_cli_accepts_cpu2_and_runs_its_self_training_by_default(tmp_path, monkeypatch):
    made = []

    class Recorder:
        def __init__(self, *args):
            made.append(args)

        def run(self):
            return {}

    monkeypatch.setattr(study_module, "Study", Recorder)
    main(["--dataset", "synthetic", "--scale", "cpu2", "-o", str(tmp_path / "a")])
    main(["--dataset", "synthetic", "--scale", "cpu2", "-o", str(tmp_path / "a"), "--no-self-training"])
    main(["--dataset", "synthetic", "--scale", "cpu2", "-o", str(tmp_path / "a"), "--self-training", "tta"])
    assert [args[2] for args in made] == ["cpu2"] * 3
    assert [args[10] for args in made] == [None, (), ("tta",)]  # None: the scale's
    with pytest.raises(SystemExit):
        main(["--dataset", "synthetic", "--scale", "cpu2", "-o", "x", "--no-self-training", "--self-training", "tta"])
    monkeypatch.undo()
    assert Study("synthetic", None, "cpu2", tmp_path / "b").self_training == ("tta", "top_proposal")
    assert Study("synthetic", None, "cpu", tmp_path / "c").self_training == ()
    assert Study("synthetic", None, "cpu2", tmp_path / "d", self_training=()).self_training == ()


def test_first_round_results_with_weak_still_render(tmp_path):
    results = [load_results(RESULTS / f"study_{tag}_cpu.json") for tag in ("hippocampus", "hc18", "hc18_n5")]
    text = write_study_report(results, tmp_path / "r.md", tmp_path / "f").read_text()
    assert text.count("Protocol complete: seed 0: 16/16 arms; seed 1: 16/16 arms") == 3  # as committed
    assert "Mining (reliable = oracle σ=0, weak = calibrated noisy and size-biased oracle):" in text
    assert "| RN-DPO | weak | top_random |" in text and "Paired comparisons, judge weak " in text
    assert "weak75" not in text and "weak62" not in text


def test_expected_seed_time_scales_the_first_rounds_arm_seconds():
    from nnunetv2_rndpo.study_report import expected_seed_seconds

    results = load_results(RESULTS / "study_hippocampus_cpu.json")
    first = expected_seed_seconds(results, "cpu")  # the first round's own protocol: its mean seed
    protocol = [a.name for a in protocol_arms(SCALES["cpu"].judges, False, 1)]
    per_seed = [sum(s["arms"][n]["seconds"] for n in protocol) for s in results["seeds"].values()]
    assert first["arms"] == 16 and first["seconds"] == pytest.approx(np.mean(per_seed), rel=0.05)
    second = expected_seed_seconds(results, "cpu2")
    # the 25 round-2 arms and 8 tuning arms, less the two oracle top_bottom arms that are tuning arms' runs
    assert len(round2_arms(SCALES["cpu2"].judges, False)) == 25 and second["arms"] == 25 + 8 - 2
    assert second["by_method"]["DPO"][1] == pytest.approx(2 * first["by_method"]["DPO"][1])  # 2x the iterations
    assert second["by_method"]["DPO"][0] == 6 + 4 + 4 - 1  # top_bottom per judge, 2 minings × 2 judges, tuning
    assert second["iterations"] == 31 * 200
    no_pseudo_label = {n: a for n, a in results["seeds"]["0"]["arms"].items() if a["method"] != "pseudo-label"}
    with pytest.raises(ValueError, match="no 'pseudo-label' arm"):
        expected_seed_seconds({**results, "seeds": {"0": {"arms": no_pseudo_label}}}, "cpu2")


def _tuning_record(validation: dict[str, float], test: dict[str, float]) -> dict:
    """Finished tuning arms whose validation and test sustained Dice are given per arm name."""
    from nnunetv2_rndpo.study_protocol import tuning_arms

    arms = {}
    for arm in tuning_arms():
        o = arm.overrides
        arms[arm.name] = {"config": {"beta": o["beta"], "learning_rate": 1e-5 * o["learning_rate_factor"]},
                          "validation_summary": {"sustained": validation.get(arm.name, 0.5)},
                          "summary": {"sustained": test.get(arm.name, 0.5)}}
    return arms


def test_beta_and_learning_rate_are_chosen_on_validation_dice_never_on_test_dice():
    from nnunetv2_rndpo.study_protocol import TUNING_GRID, tuned_arm, tuned_settings, tuning_arms

    names = [a.name for a in tuning_arms()]
    assert len(names) == 2 * len(TUNING_GRID) == len(set(names)) and all(a.judge == "oracle" for a in tuning_arms())
    rn_high_beta, rn_high_lr, dpo_low_beta = (f"{m} | oracle | top_bottom" for m in (
        "RN-DPO (tuning: β 4, lr ×1)", "RN-DPO (tuning: β 1, lr ×3)", "DPO (tuning: β 0.0025, lr ×1)"))
    assert {rn_high_beta, rn_high_lr, dpo_low_beta} <= set(names)
    # the best test Dice is another arm's: the choice follows validation only
    arms = _tuning_record({rn_high_beta: 0.9, dpo_low_beta: 0.8}, {rn_high_lr: 0.99, names[0]: 0.99})
    chosen = tuned_settings(arms)
    assert chosen["RN-DPO"]["arm"] == rn_high_beta and chosen["RN-DPO"]["beta"] == 4.0
    assert chosen["DPO"] == {"arm": dpo_low_beta, "beta": 0.0025, "learning_rate": 1e-5, "validation_sustained": 0.8}
    arms[rn_high_lr]["validation_summary"]["sustained"] = 0.95
    assert tuned_settings(arms)["RN-DPO"]["learning_rate"] == pytest.approx(3e-5)
    # every DPO-family arm of the round runs at its method's choice; the others keep their settings
    for arm in round2_arms(SCALES["cpu2"].judges, False):
        tuned = tuned_arm(arm, chosen)
        if arm.method in ("RN-DPO", "RN-DPO + sft"):
            assert tuned.overrides["beta"] == 4.0 and tuned.name == arm.name
            assert {k: v for k, v in tuned.overrides.items() if k not in ("beta", "learning_rate")} == \
                {k: v for k, v in arm.overrides.items() if k != "beta"}
        elif arm.method == "DPO":
            assert tuned.overrides["beta"] == 0.0025
        else:
            assert tuned == arm
    del arms[names[-1]]
    with pytest.raises(ValueError, match="tuning arms not finished yet"):
        tuned_settings(arms)
    blind = _tuning_record({}, {})
    del blind[names[0]]["validation_summary"]
    with pytest.raises(ValueError, match="--validation V"):
        tuned_settings(blind)


def test_a_tuning_arm_learning_rate_factor_scales_the_scale_learning_rate(tmp_path):
    from nnunetv2_rndpo.study_protocol import tuning_arms

    study = Study("synthetic", None, "cpu2", tmp_path / "s")
    arm = next(a for a in tuning_arms() if a.overrides["learning_rate_factor"] == 3.0)
    config = study.arm_config(arm, tmp_path / "scores.csv")
    assert config["learning_rate"] == pytest.approx(3e-5) and "learning_rate_factor" not in config
    assert config["judge"] == "external" and config["num_epochs"] * config["num_iterations_per_epoch"] == 200


def test_the_report_gives_tuning_arms_their_own_table_and_keeps_them_out_of_the_main_one():
    from nnunetv2_rndpo.study_protocol import tuned_settings
    from nnunetv2_rndpo.study_report import _tuning_lines, arm_table

    arms = _tuning_record({"RN-DPO (tuning: β 4, lr ×1) | oracle | top_bottom": 0.9}, {})
    for name, arm in arms.items():
        arm.update(tunes=name.split(" (")[0], method=name.split(" |")[0], judge="oracle", mining="top_bottom")
        arm["summary"].update(base=0.5, peak=0.6, final=0.5, worst_drop=0.0, delta_peak=0.1, delta_sustained=0.0,
                              delta_final=0.0)
    tuned = {**arms["RN-DPO (tuning: β 4, lr ×1) | oracle | top_bottom"], "method": "RN-DPO"}
    del tuned["tunes"]
    seed = {"arms": {**arms, "RN-DPO | oracle | top_bottom": tuned}, "tuning": tuned_settings(arms)}
    results = {"seeds": {"0": seed, "1": seed}, "protocol": {"num_validation": 20}}
    assert [r["arm"] for r in arm_table(results)] == ["RN-DPO | oracle | top_bottom"]
    lines = _tuning_lines(results)
    assert "Tuning on 20 validation cases" in lines[1]
    row = next(line for line in lines if line.startswith("| RN-DPO | 4 |"))
    assert "| 0.9000 ± 0.0000 |" in row and row.endswith("| 2/2 seeds |")
    assert sum(line.endswith("| 0/2 seeds |") for line in lines) == 6  # one choice per method and seed
    assert _tuning_lines({"seeds": {"0": {"arms": {"RN-DPO | oracle | top_bottom": tuned}}}}) == []


def test_a_tuning_scale_refuses_a_dataset_made_without_validation_cases_before_training_anything(tmp_path,
                                                                                                 monkeypatch):
    study = Study("synthetic", None, "smoke2", tmp_path / "s")
    raw = tmp_path / "raw"
    (raw / "imagesUnlabeled").mkdir(parents=True)
    trained = []
    monkeypatch.setattr(study, "make_dataset", lambda seed: raw)
    monkeypatch.setattr(study, "train_base", lambda *a: trained.append(a))
    with pytest.raises(ValueError, match="no validation cases .* use another -o"):
        study.run_seed(0)
    assert not trained


def _stub_seed_setup(study, tmp_path, monkeypatch):
    """A seed's dataset (with validation cases), base model, commands and judge scores stubbed: run_seed goes
    straight to its arms."""
    raw = tmp_path / "raw"
    (raw / "labelsVal").mkdir(parents=True)
    for step in ("make_dataset", "train_base"):
        monkeypatch.setattr(study, step, lambda *a, raw=raw: raw)
    monkeypatch.setattr(study, "_run", lambda *a, **k: 0.0)
    monkeypatch.setattr(study, "judge_scores", lambda *a, **k: (tmp_path / "scores.csv", {}))


def _finished_tuning_study(folder: Path, seed: str = "0") -> Path:
    """A smoke2 study's results.json whose seed has every tuning arm finished (RN-DPO's β 4 wins on validation)."""
    import json

    arms = _tuning_record({"RN-DPO (tuning: β 4, lr ×1) | oracle | top_bottom": 0.9,
                           "DPO (tuning: β 0.0025, lr ×1) | oracle | top_bottom": 0.9}, {})
    folder.mkdir(parents=True)
    results = {"dataset": "synthetic", "scale": "smoke2", "protocol": {"num_labeled": SCALES["smoke2"].num_labeled},
               "seeds": {seed: {"arms": arms, "judges": {}}}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder / "results.json"


def test_tuning_from_another_study_runs_no_tuning_arms_and_every_tuned_arm_at_its_choice(tmp_path, monkeypatch):
    source = _finished_tuning_study(tmp_path / "tuned")
    study = Study("synthetic", None, "smoke2", tmp_path / "s", seeds=(1,), tuning_from=source, tuning_seed=0)
    assert study.borrowed_tuning["choice"]["RN-DPO"]["beta"] == pytest.approx(4.0)
    assert study.borrowed_tuning["choice"]["DPO"]["beta"] == pytest.approx(0.0025)
    _stub_seed_setup(study, tmp_path, monkeypatch)
    ran = {}
    monkeypatch.setattr(study, "run_arm", lambda seed, arm, base, scores: ran.setdefault(
        arm.name, {**study.arm_config(arm, scores), "seed": seed}))
    monkeypatch.setattr(study, "run_self_training", lambda *a: None)
    monkeypatch.setattr(study, "run_full_label", lambda: study.results.update(full_label={"dice": 1.0}))
    study.run_seed(1)
    assert ran and not [n for n in ran if "tuning:" in n]  # no tuning arm ran
    rn_dpo = ran["RN-DPO | oracle | top_bottom"]  # run for real: no tuning arm of this study to stand in for it
    assert rn_dpo["beta"] == pytest.approx(4.0) and rn_dpo["seed"] == 1
    assert ran["DPO | oracle | top_bottom"]["beta"] == pytest.approx(0.0025)
    control = ran["control (continued supervised)"]  # untuned arms keep the scale's learning rate
    assert "beta" not in control and control["learning_rate"] == SCALES["smoke2"].learning_rate
    saved = load_results(tmp_path / "s")
    assert saved["protocol"]["tuning_from"] == {"file": str(source), "seed": 0}
    assert saved["seeds"]["1"]["tuning"] == study.borrowed_tuning["choice"]
    # a second run on the folder must tune the same way: without --tuning-from it is refused
    with pytest.raises(ValueError, match="tuned from .* not on each seed"):
        Study("synthetic", None, "smoke2", tmp_path / "s")
    Study("synthetic", None, "smoke2", tmp_path / "s", tuning_from=source)  # the same source: accepted
    monkeypatch.chdir(source.parent)
    Study("synthetic", None, "smoke2", tmp_path / "s", tuning_from=source.name)  # given by another path, too
    other = _finished_tuning_study(tmp_path / "other")  # another study's choice: refused
    with pytest.raises(ValueError, match="tuned from .*tuned.*not from .*other"):
        Study("synthetic", None, "smoke2", tmp_path / "s", tuning_from=other)
    Study("synthetic", None, "smoke2", tmp_path / "s", tuning_from=source.parent)  # its folder: the same source


def test_tuning_from_refuses_another_budget_or_a_seed_without_finished_tuning(tmp_path):
    source = _finished_tuning_study(tmp_path / "tuned")
    with pytest.raises(ValueError, match="with 8 labeled cases, not .* with 3: borrow from the same dataset, scale"):
        Study("synthetic", None, "smoke2", tmp_path / "a", labeled=3, tuning_from=source)
    with pytest.raises(ValueError, match="has no seed 5; its seeds: 0"):
        Study("synthetic", None, "smoke2", tmp_path / "b", tuning_from=source, tuning_seed=5)
    partial = _finished_tuning_study(tmp_path / "partial")
    import json
    results = json.loads(partial.read_text())
    results["seeds"]["0"]["arms"].pop("DPO (tuning: β 0.04, lr ×1) | oracle | top_bottom")
    partial.write_text(json.dumps(results))
    with pytest.raises(ValueError, match="tuning arms not finished yet: DPO .*finish that seed's tuning arms first"):
        Study("synthetic", None, "smoke2", tmp_path / "c", tuning_from=partial)
    with pytest.raises(FileNotFoundError, match="no such results file"):
        Study("synthetic", None, "smoke2", tmp_path / "d", tuning_from=tmp_path / "missing.json")


def test_the_report_of_a_study_tuned_from_another_counts_no_tuning_arms_as_missing():
    from nnunetv2_rndpo.study_report import _completeness, _tuning_lines

    protocol = {"judges": ["oracle"], "full_arms": False, "protocol_round": 2, "tuning": True, "seeds": [0]}
    names = [a.name for a in protocol_arms(("oracle",), False, 2, False)]
    seed = {"arms": {n: {} for n in names}, "tuning": {"RN-DPO": {"arm": "x", "beta": 4.0, "learning_rate": 1e-5}}}
    results = {"protocol": {**protocol, "tuning_from": {"file": "a/results.json", "seed": 0}}, "full_label": {},
               "seeds": {"0": seed}}
    assert _completeness(results).startswith("Protocol complete")
    assert _completeness({**results, "protocol": protocol}).startswith("Protocol INCOMPLETE")
    assert "seed 0 of `results.json` chose on its validation cases" in _tuning_lines(results)[1]
    assert "RN-DPO β 4, learning rate 1e-05" in _tuning_lines(results)[1]


def test_two_studies_of_one_dataset_scale_and_budget_get_their_own_sections_and_figures(tmp_path):
    import shutil

    for name in ("a_study.json", "b_study.json"):
        shutil.copy(RESULTS / "study2_hc18_n5_cpu2_restart.json", tmp_path / name)
    report = write_study_report([load_results(tmp_path / n) for n in ("a_study.json", "b_study.json")],
                                tmp_path / "r.md", tmp_path / "f")
    titles = [line for line in report.read_text().splitlines() if line.startswith("## ")]
    assert titles == ["## hc18 (2d, scale cpu2, 5 labels)", "## hc18 (2d, scale cpu2, 5 labels), b_study.json"]
    figures = {p.name for p in (tmp_path / "f").iterdir()}
    assert "hc18_n5_cpu2_oracle.png" in figures and "hc18_n5_cpu2_b_study_oracle.png" in figures


def test_cpu2lean_runs_every_comparison_in_fewer_arms_and_reports_every_judge():
    from nnunetv2_rndpo.study_protocol import scale_arms

    lean, full = SCALES["cpu2lean"], SCALES["cpu2"]
    names = [a.name for a in scale_arms(lean, False)]
    assert len(names) == 11 == len(set(names)) < len(scale_arms(full, False))
    assert (lean.num_epochs, lean.iterations_per_epoch, lean.learning_rate, lean.num_validation, lean.tuning,
            lean.self_training) == (full.num_epochs, full.iterations_per_epoch, full.learning_rate,
                                    full.num_validation, full.tuning, full.self_training)
    for judge in ("oracle", "weak62", "agreement"):
        assert {f"RN-DPO | {judge} | top_bottom", f"DPO | {judge} | top_bottom"} <= set(names)
    assert {"RN-DPO | oracle | local", "DPO | oracle | local"} <= set(names)
    assert not [n for n in names if "top_random" in n or "weak75" in n or "learned" in n]
    results = {"seeds": {"0": {"arms": {n: {"curve": [0.5, 0.6]} for n in names},
                               "self_training": {"tta": {}, "top_proposal": {}}}}}
    pairs = compared_arms(results, "agreement")
    for other in ("DPO | agreement | top_bottom", "pseudo-label | agreement | top_bottom",
                  "control (continued supervised)", "self-training (tta)", "self-training (top_proposal)"):
        assert ("RN-DPO | agreement | top_bottom", other) in pairs
    assert ("RN-DPO + sft | agreement | top_bottom", "pseudo-label | agreement | top_bottom") in pairs
    assert ("RN-DPO | oracle | local", "DPO | oracle | local") in compared_arms(results, "oracle")
    study = Study("synthetic", None, "cpu2lean", "/tmp/unused_cpu2lean")
    assert set(SCALES["cpu2"].judges) | {"uncertainty"} == set(study.report_judges)  # reliability of all six
    # a results.json without the choice fields (written before they existed) reads as the cpu2 arms it ran
    protocol = {k: v for k, v in {**full.__dict__}.items() if k not in ("mining_judges", "minings", "baseline_judges")}
    assert [a.name for a in scale_arms(protocol, False)] == [a.name for a in scale_arms(full, False)]


def test_tuning_only_runs_the_tuning_arms_and_the_full_label_model_and_another_study_borrows_both(tmp_path,
                                                                                                  monkeypatch):
    from nnunetv2_rndpo.study_protocol import tuning_arms
    from nnunetv2_rndpo.study_report import _completeness

    study = Study("synthetic", None, "smoke2", tmp_path / "t", tuning_only=True)
    assert study.self_training == ()  # the scale's self-training is not run
    _stub_seed_setup(study, tmp_path, monkeypatch)
    curves = iter(np.linspace(0.5, 0.9, 8))
    monkeypatch.setattr(study, "run_arm", lambda seed, arm, base, scores: {
        "method": arm.method, "judge": arm.judge, "mining": arm.mining, "tunes": arm.tunes,
        "config": study.arm_config(arm, scores), "validation_summary": {"sustained": float(next(curves))},
        "summary": {**dict.fromkeys(("base", "peak", "sustained", "final"), 0.5),
                    **dict.fromkeys(("worst_drop", "delta_peak", "delta_sustained", "delta_final"), 0.0)}})
    monkeypatch.setattr(study, "run_self_training", lambda *a: pytest.fail("no self-training in a tuning study"))
    monkeypatch.setattr(study, "run_full_label", lambda: study.results.update(full_label={"dice": 0.95, "seed": 0}))
    study.run_seed(0)
    saved = load_results(tmp_path / "t")
    assert sorted(saved["seeds"]["0"]["arms"]) == sorted(a.name for a in tuning_arms())
    assert saved["protocol"]["tuning_only"] and saved["full_label"]["dice"] == 0.95
    assert _completeness(saved).startswith("Protocol (a study used only for tuning: its tuning arms) complete")
    # its report section has the tuning table and no empty main table
    report = write_study_report([saved], tmp_path / "r.md", tmp_path / "f").read_text()
    assert "| method | β | learning rate |" in report and "| method | judge | mining |" not in report
    # it is complete with the seed it was run on, whatever seeds its scale lists
    assert _completeness({**saved, "protocol": {**saved["protocol"], "seeds": [0, 1, 2]}}) == \
        "Protocol (a study used only for tuning: its tuning arms) complete: seed 0: 8/8 arms; full-label model done."
    # the main study takes the choice and the upper bound from it and trains neither
    main_study = Study("synthetic", None, "smoke2", tmp_path / "m", tuning_from=tmp_path / "t",
                       full_label_from=tmp_path / "t")
    assert main_study.results["full_label"] == {"dice": 0.95, "seed": 0, "from": str(tmp_path / "t" / "results.json")}
    tuned = saved["seeds"]["0"]["arms"]
    best = max((n for n in tuned if n.startswith("RN-DPO")), key=lambda n: tuned[n]["validation_summary"]["sustained"])
    assert main_study.borrowed_tuning["choice"]["RN-DPO"]["arm"] == best
    saved = {**load_results(tmp_path / "t"), "protocol": {**saved["protocol"], "tuning_only": False}, "seeds": {}}
    saved["full_label"]["from"] = "x/results.json"
    assert "full-label model from `results.json`" in _completeness(saved)
    with pytest.raises(ValueError, match="--tuning-only runs the tuning arms, which the 'smoke' scale has none of"):
        Study("synthetic", None, "smoke", tmp_path / "u", tuning_only=True)
    with pytest.raises(ValueError, match="borrows with --tuning-from"):
        Study("synthetic", None, "smoke2", tmp_path / "u", tuning_only=True, tuning_from=tmp_path / "t")
    # what a tuning study cannot run is refused by name, not silently dropped
    with pytest.raises(ValueError, match=r"--arms DPO-top_bottom-oracle is not one of them; valid: "):
        Study("synthetic", None, "smoke2", tmp_path / "u", tuning_only=True, only_arms=["DPO-top_bottom-oracle"])
    with pytest.raises(ValueError, match="--tuning-only runs no self-training, but --self-training tta was given"):
        Study("synthetic", None, "smoke2", tmp_path / "u", tuning_only=True, self_training=("tta",))
    some = [a.name for a in tuning_arms()][:2]
    assert Study("synthetic", None, "smoke2", tmp_path / "u", tuning_only=True, only_arms=some).only_arms == some


def test_full_label_from_refuses_a_study_without_one_another_budget_or_a_folder_with_its_own(tmp_path):
    import json

    source = _finished_tuning_study(tmp_path / "a")
    with pytest.raises(ValueError, match="has no full-label model yet"):
        Study("synthetic", None, "smoke2", tmp_path / "m", full_label_from=source)
    results = json.loads(source.read_text())
    source.write_text(json.dumps({**results, "full_label": {"dice": 0.9, "seed": 0}}))
    with pytest.raises(ValueError, match="with 8 labeled cases, not .* with 3: borrow from the same"):
        Study("synthetic", None, "smoke2", tmp_path / "m", labeled=3, full_label_from=source)
    own = tmp_path / "own"
    own.mkdir()
    (own / "results.json").write_text(json.dumps({"dataset": "synthetic", "full_label": {"dice": 0.8, "seed": 0}}))
    with pytest.raises(ValueError, match="holds a full-label model of its own, not from"):
        Study("synthetic", None, "smoke2", own, full_label_from=source)
    Study("synthetic", None, "smoke2", tmp_path / "m", full_label_from=source)._save()
    Study("synthetic", None, "smoke2", tmp_path / "m", full_label_from=source.parent)  # the same file: accepted


def test_the_reliability_table_keeps_the_learned_judges_models_apart():
    from nnunetv2_rndpo.study_report import _by_learned_model

    old, new = {"pairwise/accuracy": 0.4}, {"pairwise/accuracy": 0.7, "judge/learned_model": "boundary_profile"}
    rows = _by_learned_model("learned", [old, new, old])
    assert rows == [("learned (boundary_profile, 1 seed)", [new]), ("learned (ranking_net, 2 seeds)", [old, old])]
    assert _by_learned_model("agreement", [old]) == [("agreement", [old])]
