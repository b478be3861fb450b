"""What a user sees when something is wrong or takes long (fast tier): base-model hints, traceback-free
errors of nnUNetv2_train, corrupt checkpoints, config and scores files, the start-of-run lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nnunetv2_rndpo.checkpoint import describe_trained_models, load_checkpoint_file, trained_models
from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.errors import TRACEBACK_ENV_VAR, _excepthook, is_user_error, user_errors
from nnunetv2_rndpo.mining import MININGS
from nnunetv2_rndpo.phase import PreferencePhase

REPO = Path(__file__).resolve().parents[1]
DATASET = "Dataset004_Hippocampus"

# ---------------------------------------------------------------- which base models exist


def fake_results(root: Path) -> Path:
    """``$nnUNet_results/Dataset004_Hippocampus`` with a base model of a custom trainer and our own folder."""
    results = root / "results" / DATASET
    for trainer, configuration, fold, names in [
            ("nnUNetTrainer_250epochs", "3d_fullres", 0, ["checkpoint_final.pth", "checkpoint_best.pth"]),
            ("nnUNetTrainer_250epochs", "3d_fullres", 1, ["checkpoint_latest.pth"]),
            ("nnUNetTrainerRNDPO", "3d_fullres", 0, []),
            ("nnUNetTrainerNoMirroring", "2d", 0, ["checkpoint_final.pth"]),
            ("nnUNetTrainerDPO", "3d_fullres", 0, ["checkpoint_final.pth", "rndpo_config.json"])]:
        folder = results / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(b"")
    return results


def test_trained_models_lists_trainer_folders_and_their_checkpoints(tmp_path):
    results = fake_results(tmp_path)
    models = trained_models(results, "nnUNetPlans", "3d_fullres", exclude=("nnUNetTrainerRNDPO",))
    assert models["nnUNetTrainer_250epochs"] == {"fold_0": ["checkpoint_final.pth", "checkpoint_best.pth"],
                                                 "fold_1": ["checkpoint_latest.pth"]}
    assert "nnUNetTrainerRNDPO" not in models
    sentence, candidates = describe_trained_models(results, "nnUNetPlans", "3d_fullres", 0)
    assert "nnUNetTrainer_250epochs (fold_0: checkpoint_final.pth, checkpoint_best.pth; fold_1: " \
           "checkpoint_latest.pth)" in sentence
    assert "nnUNetTrainerDPO (fold_0: checkpoint_final.pth; RN-DPO fine-tuned)" in sentence
    assert candidates == ["nnUNetTrainer_250epochs"]  # not the 2d model, not our own folder, not a fine-tuned one
    assert describe_trained_models(results, "nnUNetPlans", "3d_fullres", 1)[1] == []
    assert "has no nnUNetPlans 3d_lowres model" in describe_trained_models(results, "nnUNetPlans", "3d_lowres", 0)[0]


def fake_trainer(root: Path, **config) -> SimpleNamespace:
    results = root / "results" / DATASET
    return SimpleNamespace(
        rndpo_config=RNDPOConfig(**config), output_folder=str(results / "nnUNetTrainerRNDPO__nnUNetPlans__3d_fullres"
                                                                     / "fold_0"),
        output_folder_base=str(results / "nnUNetTrainerRNDPO__nnUNetPlans__3d_fullres"), fold=0,
        configuration_name="3d_fullres", plans_manager=SimpleNamespace(plans_name="nnUNetPlans", dataset_name=DATASET))


def test_a_missing_base_checkpoint_names_base_trainer_and_the_trainers_that_exist(tmp_path):
    fake_results(tmp_path)
    phase = PreferencePhase(fake_trainer(tmp_path))
    with pytest.raises(FileNotFoundError) as caught:
        phase.base_checkpoint()
    message = str(caught.value)
    assert "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth not found (base_trainer " \
           "'nnUNetTrainer')" in message
    assert "nnUNetTrainer_250epochs (fold_0: checkpoint_final.pth, checkpoint_best.pth; fold_1: " \
           "checkpoint_latest.pth)" in message
    assert '{"base_trainer": "nnUNetTrainer_250epochs"}' in message
    assert "nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainer -p nnUNetPlans" in message
    phase = PreferencePhase(fake_trainer(tmp_path, base_trainer="nnUNetTrainer_250epochs"))
    assert phase.base_checkpoint().parent.parent.name == "nnUNetTrainer_250epochs__nnUNetPlans__3d_fullres"


def test_a_missing_or_directory_base_checkpoint_path_says_which(tmp_path):
    phase = PreferencePhase(fake_trainer(tmp_path, base_checkpoint=str(tmp_path / "none.pth")))
    with pytest.raises(FileNotFoundError, match=r"base_checkpoint .*none.pth \(in the file named by "
                                                r"\$nnUNet_rndpo_config\) does not exist"):
        phase.base_checkpoint()
    phase = PreferencePhase(fake_trainer(tmp_path, base_checkpoint=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"base_checkpoint .* is a directory; point it at a checkpoint_final"):
        phase.base_checkpoint()


# ---------------------------------------------------------------- corrupt checkpoint


def test_a_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(1000)}}, path)
    assert set(load_checkpoint_file(path)) == {"network_weights"}
    path.write_bytes(path.read_bytes()[:500])  # a copy cut off
    with pytest.raises(ValueError, match=rf"The checkpoint {path} cannot be read \(.*\): it is truncated or corrupt"):
        load_checkpoint_file(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=rf"The checkpoint {path} cannot be read"):
        load_checkpoint_file(path)


# ---------------------------------------------------------------- traceback-free user errors


def test_user_errors_marks_only_our_own_messages():
    with pytest.raises(ValueError) as ours, user_errors():
        RNDPOConfig(mining="best")
    assert is_user_error(ours.value)
    with pytest.raises(ValueError) as theirs, user_errors():
        int("x")  # raised by Python, not by this package: a bug keeps its traceback
    assert not is_user_error(theirs.value)
    with pytest.raises(KeyError) as other, user_errors():
        {}["x"]
    assert not is_user_error(other.value)


SCRIPT = """
import sys
from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.errors import user_errors
with user_errors():
    RNDPOConfig(**{sys.argv[1]: sys.argv[2]})
"""


@pytest.mark.parametrize("traceback", [False, True])
def test_an_uncaught_user_error_prints_the_message_alone_and_exits_1(traceback):
    env = {"PYTHONPATH": str(REPO), **({TRACEBACK_ENV_VAR: "1"} if traceback else {})}
    result = subprocess.run([sys.executable, "-c", SCRIPT, "mining", "best"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "config key 'mining': 'best' is not allowed; valid: top_bottom" in result.stderr
    assert ("Traceback" in result.stderr) == traceback
    if not traceback:
        assert result.stderr.strip().splitlines() == [
            f"ValueError: config key 'mining': 'best' is not allowed; valid: {', '.join(MININGS)}"]


def test_a_bug_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV_VAR, raising=False)
    try:
        with user_errors():
            int("x")
    except ValueError as error:
        _excepthook(type(error), error, error.__traceback__)
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------- what a run says before and while it trains


def test_the_schedule_line_states_the_defaults_and_the_config_file():
    from nnunetv2_rndpo.messages import schedule_summary

    line = schedule_summary(RNDPOConfig(), "nnUNetTrainerRNDPO", 2, None)
    assert line.startswith("RN-DPO: nnUNetTrainerRNDPO: 50 epochs × 100 iterations of 2 pairs")
    for part in ("adamw at learning rate 1e-05", "normalization region, β 4", "judge agreement, mining top_bottom",
                 "8 per case from mirror, threshold", "Config: the defaults ($nnUNet_rndpo_config is not set"):
        assert part in line, part
    line = schedule_summary(RNDPOConfig(normalization="none", pairs_file="p.json"), "nnUNetTrainerDPO", 4, "/c.json")
    assert "β 0.01" in line and "pairs from p.json" in line and line.endswith("Config: /c.json")


def test_the_pairs_line_counts_pairs_and_their_mean_region():
    from nnunetv2_rndpo.messages import pairs_summary
    from nnunetv2_rndpo.mining import Pair

    pairs = [Pair("a", 0, 1, 0.9, 0.1, 100), Pair("b", 0, 1, 0.9, 0.1, 300)]
    assert pairs_summary(pairs, 3, "judge agreement, mining top_bottom") == (
        "RN-DPO: 2 pairs from 3 pool cases (judge agreement, mining top_bottom), mean |D| 200 voxels")


@pytest.mark.parametrize("seconds, text", [(45, "45 s"), (720, "12 min"), (4020, "1 h 07 min"), (36000, "10 h 00 min")])
def test_durations_read_like_a_clock(seconds, text):
    from nnunetv2_rndpo.messages import format_duration

    assert format_duration(seconds) == text


def test_the_time_estimate_after_the_first_iterations():
    from nnunetv2_rndpo.messages import time_estimate

    assert time_estimate(0.804, 50, 100).startswith("RN-DPO: ~0.8 s/iteration, ~1 h 07 min for 50 × 100 iterations")


def test_the_estimate_is_printed_once_after_the_timed_iterations():
    from nnunetv2_rndpo.messages import TIMED_ITERATIONS

    logged = []
    trainer = SimpleNamespace(rndpo_config=RNDPOConfig(), output_folder="x", num_iterations_per_epoch=100,
                              num_epochs=50, current_epoch=0, print_to_log_file=logged.append)
    phase = PreferencePhase(trainer)
    for _ in range(TIMED_ITERATIONS):
        phase.iteration_done()
    assert logged == []  # the first iteration is a warm-up: TIMED_ITERATIONS more are timed
    for _ in range(10):
        phase.iteration_done()
    (line,) = logged
    assert " s/iteration, ~" in line and "for 50 × 100 iterations" in line


def test_a_very_large_pool_case_gets_a_note():
    from nnunetv2_rndpo.messages import large_case_notes

    # median of the voxel counts: (40·56·40 + 38·52·41) / 2 = 85 308; 140·200·132 = 3 696 000 ≈ 43× that
    shapes = {"small": (40, 56, 40), "usual": (36, 50, 35), "also": (38, 52, 41), "huge": (140, 200, 132)}
    (note,) = large_case_notes(shapes, (40, 56, 40))
    assert note.startswith("RN-DPO: pool case 'huge' is 140×200×132 voxels after preprocessing, ~43× the pool median")
    assert "~41× the patch (40×56×40); its proposals take a while" in note
    assert large_case_notes({"only": (500, 500, 500)}, (40, 56, 40)) == []
    assert large_case_notes({"a": (10, 10, 10), "b": (30, 30, 30), "c": (10, 10, 10)}, (64, 64, 64)) == []


# ---------------------------------------------------------------- config file and keys


def test_a_config_path_that_is_a_directory_says_so(tmp_path):
    from nnunetv2_rndpo.config import load_config

    with pytest.raises(IsADirectoryError, match=r"points at .*, which is a directory; it must name a JSON file"):
        load_config(environ={"nnUNet_rndpo_config": str(tmp_path)})


def test_a_config_file_with_a_bom_is_read(tmp_path):
    from nnunetv2_rndpo.config import load_config

    path = tmp_path / "rndpo.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"beta": 0.5}')
    assert load_config(environ={"nnUNet_rndpo_config": str(path)}).beta == 0.5


def test_every_vocabulary_key_lists_its_valid_values_for_a_wrong_name_and_a_wrong_type():
    import dataclasses

    from nnunetv2_rndpo.config import vocabularies

    vocabulary = vocabularies()
    # every key whose help says it takes names from a set is a vocabulary key
    named = {f.name for f in dataclasses.fields(RNDPOConfig) if "one of" in f.metadata["help"]
             or "any of" in f.metadata["help"]}
    assert named == set(vocabulary), named ^ set(vocabulary)
    for key, valid in vocabulary.items():
        listed = ", ".join(valid)
        wrong_name = ["no_such_name"] if key == "proposal_sources" else "no_such_name"
        for bad in (wrong_name, 3):
            with pytest.raises(ValueError) as caught:
                RNDPOConfig(**{key: bad})
            assert listed in str(caught.value), (key, bad, str(caught.value))
    with pytest.raises(ValueError,
                       match=r"'label_smoothing': 'x' is not allowed; valid: a number in \[0, 0.5\) or 'auto'"):
        RNDPOConfig(label_smoothing="x")


# ---------------------------------------------------------------- scores CSV


def test_a_scores_csv_with_a_bom_is_read_and_one_in_another_encoding_is_named(tmp_path):
    from nnunetv2_rndpo.judges import read_external_scores

    path = tmp_path / "scores.csv"
    path.write_bytes("\ufeffcase_id,proposal,score\na,0,0.2\na,1,0.8\n".encode())  # what Excel's "CSV UTF-8" writes
    assert read_external_scores(path, {"a": 2})["a"].tolist() == [0.2, 0.8]
    path.write_bytes("case_id,proposal,score\na,0,0.2\na,1,0.8\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"scores.csv is not UTF-8 text .*; save it as CSV in UTF-8"):
        read_external_scores(path, {"a": 2})


# ---------------------------------------------------------------- the learned judge's file


def test_an_unwritable_judge_output_is_an_error_before_training(tmp_path):
    from nnunetv2_rndpo.commands import require_writable

    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")  # (as root, chmod would not stop a write)
    with pytest.raises(PermissionError, match=r"cannot write .*results/fold_0/rndpo_judge.pth \(.*\); choose a "
                                              r"writable file with -o"):
        require_writable(blocker / "fold_0" / "rndpo_judge.pth")
    require_writable(tmp_path / "new" / "rndpo_judge.pth")
    assert list((tmp_path / "new").iterdir()) == []  # the probe is removed


def test_a_judge_that_cannot_be_saved_is_kept_in_the_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    from nnunetv2_rndpo.commands import save_learned_judge

    saved = []

    class Judge:
        def save(self, path):
            if "results" in str(path):
                raise OSError(28, "No space left on device")
            Path(path).write_text("judge")
            saved.append(Path(path))

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    with pytest.raises(PermissionError, match=r"cannot write .*results/rndpo_judge.pth \(OSError: No space left on "
                                              r"device\); the trained judge was saved to "
                                              r".*rndpo_judge_\d+.pth instead"):
        save_learned_judge(Judge(), tmp_path / "results" / "rndpo_judge.pth")
    (rescue,) = saved
    assert rescue.parent == tmp_path and rescue.read_text() == "judge"
