"""``nnUNetv2_rndpo_demo``: the project's main job, end to end with nnU-Net's real commands.

make the dataset → ``nnUNetv2_plan_and_preprocess`` → base ``nnUNetv2_train`` on the labeled cases →
``nnUNetv2_rndpo_proposals`` → ``nnUNetv2_rndpo_judge`` (agreement and a noisy oracle, with reliability
reports) → ``nnUNetv2_train -tr nnUNetTrainerRNDPO`` and ``-tr nnUNetTrainerDPO`` → ``nnUNetv2_predict`` on
the test cases → ``nnUNetv2_evaluate_folder`` → ``OUTDIR/report.md`` with figures.

Every nnU-Net folder lives inside OUTDIR (``OUTDIR/nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``).

Assumption: the demo always works inside OUTDIR and ignores ``nnUNet_raw/_preprocessed/_results`` set by
the user (it says so when they are set): a demo run is then self-contained, deletable with OUTDIR, and
can never collide with or overwrite a dataset id in the user's own folders.

Finished stages are skipped when the demo is run again with the same OUTDIR and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nnunetv2_rndpo.paths import nnunet_environment, run_logged

ARMS = {"base": None, "dpo": "nnUNetTrainerDPO", "rndpo": "nnUNetTrainerRNDPO"}
PROGRESS = re.compile(r"Epoch \d+$|test Dice after .*$")


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides a demo run's results (a rerun with other settings needs another OUTDIR).

    Assumption: the schedules were chosen so that the default 2D synthetic run fits in 10 minutes on a
    2-core CPU (README) and ``--quick`` in about 3; they are far shorter than a study's.
    """

    source: str = "synthetic"
    dim: str = "2d"
    device: str = "cpu"
    quick: bool = False
    dataset_id: int = 981
    num_labeled: int = 8
    num_unlabeled: int = 24
    num_test: int = 10
    base_trainer: str = "nnUNetTrainer_cpuBase"
    num_proposals: int = 6
    judge_sigma: float = 0.01
    num_epochs: int = 8
    num_iterations_per_epoch: int = 20
    seed: int = 0
    shape: tuple[int, ...] | None = None

    @classmethod
    def create(cls, source: str, dim: str, device: str, quick: bool) -> DemoSettings:
        """The settings of a full or ``--quick`` run on ``source``."""
        dataset_id = 981 if source == "synthetic" else 983
        if quick:
            return cls(source, dim, device, quick, dataset_id, num_labeled=6, num_unlabeled=6, num_test=4,
                       base_trainer="nnUNetTrainer_rndpoSmoke", num_proposals=4, num_epochs=2,
                       num_iterations_per_epoch=5, shape=(32, 32) if dim == "2d" else (16, 24, 24))
        if source == "synthetic":
            return cls(source, dim, device, quick, dataset_id)
        return cls(source, dim, device, quick, dataset_id, num_labeled=10, num_unlabeled=24, num_test=20)

    def fine_tuning_config(self) -> dict:
        """The ``nnUNet_rndpo_config`` of both fine-tuning arms (they differ only in the trainer).

        Assumption: the noisy oracle (σ = ``judge_sigma`` on the true Dice) ranks the proposals for
        fine-tuning, standing in for a real QC judge. σ = 0.01 because the proposals of one case differ in
        Dice by only a few hundredths on the synthetic default, so a σ of 0.1 would swamp those differences and
        the mined pairs would carry no signal. lr 1e-4 with the consistency anchor follows
        docs/results/anchors_hippocampus_cpu.md (no anchor drifts away quickly at this lr).
        """
        return {"num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                "num_val_iterations_per_epoch": 2, "eval_every": 1, "base_trainer": self.base_trainer,
                "num_proposals": self.num_proposals, "seed": self.seed, "judge": "oracle",
                "judge_sigma": self.judge_sigma, "learning_rate": 1e-4, "consistency_weight": 1.0}


class StageRunner:
    """Runs the demo's stages as subprocesses with nnU-Net's env vars inside OUTDIR, logs and times them.

    A stage whose marker ``OUTDIR/stages/<name>.json`` exists is skipped (it finished in an earlier run).
    Each stage's output goes to ``OUTDIR/logs/<name>.log``; epoch lines are echoed as progress.
    """

    def __init__(self, root: Path, num_stages: int):
        self.root = root
        self.env = demo_environment(root)
        self.seconds: dict[str, float] = {}
        self.num_stages = num_stages
        self.done = 0
        for folder in ("logs", "stages"):
            (root / folder).mkdir(parents=True, exist_ok=True)

    def _skip_or_start(self, name: str) -> bool:
        self.done += 1
        marker = self.root / "stages" / f"{name}.json"
        if marker.is_file():
            self.seconds[name] = json.loads(marker.read_text())["seconds"]
            print(f"[{self.done}/{self.num_stages}] {name}: done in an earlier run ({self.seconds[name]:.0f} s)",
                  flush=True)
            return True
        return False

    def _finish(self, name: str, start: float) -> None:
        self.seconds[name] = round(time.time() - start, 1)
        (self.root / "stages" / f"{name}.json").write_text(json.dumps({"seconds": self.seconds[name]}))
        print(f"    done in {self.seconds[name]:.0f} s (total {sum(self.seconds.values()):.0f} s)", flush=True)

    def python(self, name: str, function, *args, **kwargs) -> None:
        """Runs an in-process stage ``function(*args, **kwargs)``."""
        if self._skip_or_start(name):
            return
        print(f"[{self.done}/{self.num_stages}] {name}", flush=True)
        start = time.time()
        function(*args, **kwargs)
        self._finish(name, start)

    def command(self, name: str, command: list[str], **extra_env: str) -> None:
        """Runs one console script of this environment, e.g. ``["nnUNetv2_train", "981", "2d", "0"]``.

        Raises:
            RuntimeError: the command failed; the message names its log.
        """
        if self._skip_or_start(name):
            return
        print(f"[{self.done}/{self.num_stages}] {name}: {' '.join(command)}", flush=True)
        start = time.time()
        log = self.root / "logs" / f"{name}.log"

        def show_progress(line: str) -> None:
            match = PROGRESS.search(line.strip())
            if match:
                print(f"    {match.group(0)}", flush=True)

        code = run_logged(command, {**self.env, **extra_env}, log, show_progress)
        if code != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise RuntimeError(f"stage {name} failed (exit {code}); the end of {log}:\n{tail}")
        self._finish(name, start)


def demo_environment(root: Path) -> dict[str, str]:
    """The environment of every stage: nnU-Net's folders inside ``root``, the fastest CPU settings
    (:func:`~nnunetv2_rndpo.paths.nnunet_environment`; the user's own ``nnUNet_*`` folders are not used, see the
    module's Assumption)."""
    return nnunet_environment(root)


def make_demo_dataset(settings: DemoSettings, raw_root: Path) -> Path:
    """The demo's dataset: the synthetic default or an import of ``settings.source``."""
    from nnunetv2_rndpo.datasets import make_dataset
    from nnunetv2_rndpo.synthetic import make_synthetic_dataset

    if settings.source == "synthetic":
        return make_synthetic_dataset(raw_root, settings.dataset_id, dim=int(settings.dim[0]),
                                      num_labeled=settings.num_labeled, num_unlabeled=settings.num_unlabeled,
                                      num_test=settings.num_test, seed=settings.seed, overwrite=True,
                                      shape=settings.shape)
    return make_dataset(settings.source, raw_root, settings.dataset_id, "RNDPODemo", settings.num_labeled,
                        settings.num_test, settings.seed, settings.num_unlabeled, overwrite=True)


def _check_settings(root: Path, settings: DemoSettings) -> None:
    path = root / "demo_settings.json"
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(asdict(settings))):
        raise ValueError(f"{root} holds a demo run with other settings ({path}); use another -o or delete {root}")
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(settings), indent=1))


def run_demo(output_folder: str | os.PathLike, source: str = "synthetic", dim: str = "2d", device: str = "cpu",
             quick: bool = False) -> Path:
    """Runs the whole demo and returns the path of ``report.md``.

    Args:
        output_folder: OUTDIR; created if missing.
        source: ``synthetic`` or a folder (MSD layout or 2D PNG with masks) to import.
        dim: ``2d`` or ``3d``: the synthetic data's dimension (an imported source decides it itself).
        device: ``cpu`` or ``cuda``.
        quick: the reduced schedule for CI.

    Raises:
        ValueError: OUTDIR holds a run with other settings, or bad arguments.
        RuntimeError: a stage failed (the message names its log).
    """
    if dim not in ("2d", "3d") or device not in ("cpu", "cuda"):
        raise ValueError(f"--dim must be 2d or 3d and -device cpu or cuda, got {dim}, {device}")
    if source != "synthetic" and not Path(source).is_dir():
        raise FileNotFoundError(f"--source {source} is neither 'synthetic' nor a folder")
    root = Path(output_folder).resolve()
    settings = DemoSettings.create(source if source == "synthetic" else str(Path(source).resolve()), dim, device, quick)
    _check_settings(root, settings)
    if any(os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")):
        print(f"note: your nnUNet_raw/_preprocessed/_results are not used or touched; this demo works in {root}")
    raw_root = root / "nnUNet_raw"
    runner = StageRunner(root, num_stages=14)
    start = time.time()
    runner.python("make_dataset", make_demo_dataset, settings, raw_root)
    dataset_folder = next(raw_root.glob(f"Dataset{settings.dataset_id:03d}_*"))
    ending = json.loads((dataset_folder / "dataset.json").read_text())["file_ending"]
    configuration = "2d" if ending == ".png" else "3d_fullres"
    d, dev = str(settings.dataset_id), ["-device", device]
    runner.command("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", d, "-c", configuration,
                                           "-npfp", "1", "-np", "1"], nnUNet_n_proc_DA="1")
    runner.command("train_base", ["nnUNetv2_train", d, configuration, "0", "-tr", settings.base_trainer, *dev])
    shared = ["-d", d, "-c", configuration, "-f", "0", "-tr", settings.base_trainer, "-n", str(settings.num_proposals),
              "--seed", str(settings.seed), *dev, "--quiet"]
    runner.command("proposals", ["nnUNetv2_rndpo_proposals", *shared])
    for judge, extra in (("agreement", []), ("oracle", ["--judge-sigma", str(settings.judge_sigma)])):
        runner.command(f"judge_{judge}", ["nnUNetv2_rndpo_judge", *shared, "--judge", judge, *extra, "--report",
                                          "-o", str(root / "judges" / f"scores_{judge}.csv")])
    config = root / "rndpo_config.json"
    config.write_text(json.dumps(settings.fine_tuning_config(), indent=1))
    for arm in ("rndpo", "dpo"):
        runner.command(f"train_{arm}", ["nnUNetv2_train", d, configuration, "0", "-tr", ARMS[arm], *dev],
                       nnUNet_rndpo_config=str(config))
    for arm, trainer in ARMS.items():
        out = root / "predictions" / arm
        runner.command(f"predict_{arm}", ["nnUNetv2_predict", "-i", str(dataset_folder / "imagesTs"), "-o", str(out),
                                          "-d", d, "-c", configuration, "-f", "0",
                                          "-tr", trainer or settings.base_trainer,
                                          *dev, "-npp", "0", "-nps", "0", "--disable_progress_bar"])
        runner.command(f"evaluate_{arm}", ["nnUNetv2_evaluate_folder", str(dataset_folder / "labelsTs"), str(out),
                                           "-djfile", str(out / "dataset.json"), "-pfile", str(out / "plans.json"),
                                           "-np", "1"])
    from nnunetv2_rndpo.report import write_demo_report

    report = write_demo_report(root, dataset_folder, configuration, settings.base_trainer, runner.seconds)
    print(f"report: {report}  (demo took {time.time() - start:.0f} s this run, "
          f"{sum(runner.seconds.values()):.0f} s of stages in all)")
    return report


def parser() -> argparse.ArgumentParser:
    """``nnUNetv2_rndpo_demo``'s flags."""
    p = argparse.ArgumentParser(
        prog="nnUNetv2_rndpo_demo",
        description="The main job, end to end with nnU-Net's real commands: dataset → plan and preprocess → base "
                    "training → proposals → judges → nnUNetTrainerRNDPO and nnUNetTrainerDPO fine-tuning → predict → "
                    "evaluate → OUTDIR/report.md. nnU-Net's folders are created inside OUTDIR; a rerun skips "
                    "finished stages.")
    p.add_argument("-o", "--output", default="demo_output", help="OUTDIR. Default: demo_output")
    p.add_argument("--dim", choices=("2d", "3d"), default="2d", help="synthetic data's dimension. Default: 2d")
    p.add_argument("--source", default="synthetic",
                   help="'synthetic' (built in) or a folder to import: MSD layout (imagesTr/, labelsTr/) or 2D PNG "
                        "images + masks. Default: synthetic")
    p.add_argument("-device", choices=("cpu", "cuda"), default="cpu", help="Default: cpu")
    # the spelling before nnU-Net's -device was adopted, kept for scripts that use it
    p.add_argument("--device", dest="device", choices=("cpu", "cuda"), default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="a reduced run (fewer cases, shorter schedules) for CI")
    return p


def main(argv: list[str] | None = None) -> None:
    from nnunetv2_rndpo.commands import run_command

    run_command(parser(), lambda args: run_demo(args.output, args.source, args.dim, args.device, args.quick), argv)
