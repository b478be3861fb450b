"""The ``nnUNetv2_rndpo_*`` commands' argument checks and the split into parts (fast; the commands run end to
end in test_e2e_toolkit.py)."""

import pytest

from nnunetv2_rndpo.pipeline import split_cases


def test_split_cases_is_nnunet_predicts_split():
    cases = [f"c{i}" for i in range(5)]
    assert split_cases(cases, 2, 0) == ["c0", "c2", "c4"] and split_cases(cases, 2, 1) == ["c1", "c3"]
    with pytest.raises(ValueError, match="-part_id must be in 0 ... 1 \\(-num_parts 2\\), got 2"):
        split_cases(cases, 2, 2)
    with pytest.raises(ValueError, match="-num_parts must be >= 1"):
        split_cases(cases, 0, 0)


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("main_proposals", ["-d", "1", "-c", "2d", "-num_parts", "2", "-part_id", "3"], "-part_id must be in 0 ... 1"),
        ("main_proposals", ["-d", "1", "-c", "2d", "-n", "1"], "-n must be >= 2"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "external"], "--judge external needs --scores FILE"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "oracle", "--judge-sigma", "-1"],
         "--judge-sigma must be >= 0"),
        ("main_train_judge", ["-d", "1", "-c", "2d", "--epochs", "0"], "--epochs must be >= 1"),
        ("main_mine", ["-d", "1", "-c", "2d", "--scores", "s.csv", "--max-pairs-per-case", "0"],
         "max_pairs_per_case must be >= 1"),
        ("main_mine", ["-d", "1", "-c", "2d", "--scores", "s.csv", "--mining", "local"], "needs --hybrids N"),
        ("main_mine", ["-d", "1", "-c", "2d", "--scores", "s.csv", "--hybrids", "4"], "drop --hybrids"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "oracle", "--hybrids", "-1"], "--hybrids must be >= 0"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "oracle", "--hybrids", "4", "--local-part-voxels", "5"],
         "local_min_part_voxels <= local_part_voxels"),
    ],
)
def test_commands_reject_bad_flags_before_any_work(command, argv, message, capsys):
    from nnunetv2_rndpo import commands

    with pytest.raises(SystemExit) as exit_info:
        getattr(commands, command)(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--judge", "gpt"], ["--judge", "oracle", "--sources", "dreams"]])
def test_commands_reject_unknown_choices(argv, capsys):
    from nnunetv2_rndpo import commands

    with pytest.raises(SystemExit):
        commands.main_judge(["-d", "1", "-c", "2d", *argv])
    assert "invalid choice" in capsys.readouterr().err
