"""The folders and environments built once in nnunetv2_rndpo.paths."""

from __future__ import annotations

import os
from pathlib import Path

from nnunetv2_rndpo.paths import (
    BENCHMARK_FOLDERS,
    TRAINERS_FOLDER,
    nnunet_environment,
    results_folder,
    rndpo_cache_folder,
    rndpo_cache_root,
    run_logged,
)


def test_results_folder_is_nnunets_output_folder_under_any_root(tmp_path):
    from nnunetv2.utilities import file_path_utilities

    original = file_path_utilities.nnUNet_results
    file_path_utilities.nnUNet_results = str(tmp_path)  # the root nnU-Net read from $nnUNet_results at import
    try:
        for fold in (None, 0, "all"):
            expected = file_path_utilities.get_output_folder("Dataset004_Hippocampus", "nnUNetTrainer",
                                                             "nnUNetPlans", "3d_fullres", fold)
            assert results_folder(tmp_path, "Dataset004_Hippocampus", "nnUNetTrainer", "nnUNetPlans", "3d_fullres",
                                  fold) == Path(expected)
    finally:
        file_path_utilities.nnUNet_results = original


def test_rndpo_cache_folder_is_inside_the_datasets_cache_root(tmp_path):
    assert rndpo_cache_folder(tmp_path, "Dataset004_X", "nnUNetPlans", "2d") == \
        rndpo_cache_root(tmp_path, "Dataset004_X") / "nnUNetPlans_2d" == \
        tmp_path / "Dataset004_X" / "rndpo" / "nnUNetPlans_2d"


def test_nnunet_environment_stays_inside_root_and_keeps_the_users_cpu_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", "/users/own/raw")
    monkeypatch.setenv("nnUNet_rndpo_config", "/users/own/rndpo.json")
    monkeypatch.setenv("nnUNet_def_n_proc", "7")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("nnUNetX", "not an nnU-Net variable")
    env = nnunet_environment(tmp_path, {"nnUNet_results": "/elsewhere"})
    assert env["nnUNet_raw"] == str(tmp_path / "nnUNet_raw")
    assert env["nnUNet_preprocessed"] == str(tmp_path / "nnUNet_preprocessed")
    assert env["nnUNet_results"] == "/elsewhere"  # extra goes on top
    assert "nnUNet_rndpo_config" not in env and env["nnUNetX"] == "not an nnU-Net variable"
    assert env["nnUNet_def_n_proc"] == "7" and env["nnUNet_compile"] == "f" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert Path(env["nnUNet_extTrainer"]) == TRAINERS_FOLDER and (TRAINERS_FOLDER / "rndpo_trainers.py").is_file()
    short = nnunet_environment(tmp_path, folder_names=BENCHMARK_FOLDERS)
    assert short["nnUNet_raw"] == str(tmp_path / "raw") and short["nnUNet_results"] == str(tmp_path / "results")
    assert os.environ["nnUNet_raw"] == "/users/own/raw"


def test_run_logged_writes_the_log_and_returns_the_exit_code(tmp_path):
    lines = []
    code = run_logged(["python", "-c", "import sys; print('one'); print('two', file=sys.stderr); sys.exit(3)"],
                      os.environ, tmp_path / "logs" / "stage.log", lines.append)
    assert code == 3
    assert (tmp_path / "logs" / "stage.log").read_text().splitlines() == ["one", "two"]
    assert [line.strip() for line in lines] == ["one", "two"]
