"""Where nnU-Net and RN-DPO keep things, and the environment nnU-Net's commands run in: each built here once.

- :func:`rndpo_cache_folder`: RN-DPO's caches beside nnU-Net's preprocessed data;
- :func:`results_folder`: nnU-Net's ``Trainer__Plans__configuration[/fold_f]`` results folder under any root;
- :func:`nnunet_environment`: the environment of nnU-Net commands that work inside one folder (the demo, the
  study, the benchmarks);
- :func:`run_logged`: runs one console script of this environment with its output in a log file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

TRAINERS_FOLDER = Path(__file__).resolve().parents[1] / "trainers"
# nnU-Net's fastest reliable CPU settings, as the Makefile exports them for the tests; OMP_WAIT_POLICY=PASSIVE:
# OpenMP threads sleep instead of spinning while they wait, which a busy machine needs
CPU_SETTINGS = {"nnUNet_compile": "f", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "OMP_WAIT_POLICY": "PASSIVE"}
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
BENCHMARK_FOLDERS = ("raw", "preprocessed", "results")  # the benchmarks' (and tests') shorter folder names


def rndpo_cache_root(preprocessed_root: str | os.PathLike, dataset_name: str) -> Path:
    """``<preprocessed_root>/<dataset_name>/rndpo``: every cache of one dataset (``nnUNetv2_rndpo_clean`` lists it)."""
    return Path(preprocessed_root) / dataset_name / "rndpo"


def rndpo_cache_folder(preprocessed_root: str | os.PathLike, dataset_name: str, plans_name: str,
                       configuration: str) -> Path:
    """``<preprocessed_root>/<dataset_name>/rndpo/<plans_name>_<configuration>``.

    A sibling of nnU-Net's own preprocessed folders (nnU-Net asserts one file type there). It holds the
    preprocessed unlabeled pool (``pool/``) and test set (``test/``), shared by every fold and base model,
    and the proposal caches (``proposals/<key>/``, ``labeled_proposals/<key>/``), one per base model and
    proposal settings; they coexist and are removed only by ``nnUNetv2_rndpo_clean``.
    """
    return rndpo_cache_root(preprocessed_root, dataset_name) / f"{plans_name}_{configuration}"


def results_folder(results_root: str | os.PathLike, dataset_name: str, trainer: str, plans: str,
                   configuration: str, fold: int | str | None = None) -> Path:
    """``<results_root>/<dataset_name>/<trainer>__<plans>__<configuration>[/fold_<fold>]``.

    nnU-Net's ``get_output_folder`` (``nnunetv2.utilities.file_path_utilities``) with the root as an argument:
    that function always uses ``$nnUNet_results`` as nnU-Net read it at import, and the demo, the study and the
    benchmarks name folders of other roots (tests/test_paths.py checks that the two agree).
    """
    folder = Path(results_root) / dataset_name / f"{trainer}__{plans}__{configuration}"
    return folder if fold is None else folder / f"fold_{fold}"


def nnunet_environment(root: str | os.PathLike, extra: Mapping[str, str] | None = None,
                       folder_names: tuple[str, str, str] = NNUNET_FOLDERS) -> dict[str, str]:
    """A copy of ``os.environ`` for nnU-Net commands that work inside ``root`` only.

    - the user's own ``nnUNet_*`` variables are dropped (their folders are not read or touched), except the
      :data:`CPU_SETTINGS` keys, which keep the user's value if set and get the fast CPU default otherwise
      (``OMP_WAIT_POLICY`` too);
    - ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` = ``root / name`` for the three
      ``folder_names`` (default the variables' own names; the benchmarks use ``raw``, ``preprocessed``,
      ``results``), and ``nnUNet_extTrainer`` = the repository's ``trainers/`` (the RN-DPO trainers);
    - ``extra`` on top of everything.
    """
    root = Path(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update({k: os.environ.get(k, v) for k, v in CPU_SETTINGS.items()})
    env.update({variable: str(root / name) for variable, name in zip(NNUNET_FOLDERS, folder_names, strict=True)})
    env["nnUNet_extTrainer"] = str(TRAINERS_FOLDER)
    env.update(extra or {})
    return env


def run_logged(command: list[str], env: Mapping[str, str], log: Path,
               on_line: Callable[[str], None] | None = None) -> int:
    """Runs ``command`` (its first word a console script beside this Python, e.g. ``nnUNetv2_train``) in ``env``,
    writing its stdout and stderr line by line to ``log``; returns the exit code.

    ``on_line`` sees every line as it comes (the demo prints nnU-Net's epoch lines from it).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    executable = Path(sys.executable).parent / command[0]
    with open(log, "w", buffering=1) as f, subprocess.Popen(
            [str(executable), *command[1:]], env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) as process:
        for line in process.stdout:
            f.write(line)
            if on_line is not None:
                on_line(line)
    return process.returncode
