"""``nnUNetv2_rndpo_smoke``: the end-to-end smoke run with nnU-Net's real commands on synthetic data.

make dataset → ``nnUNetv2_plan_and_preprocess`` → base ``nnUNetv2_train`` (short schedule) →
``nnUNetv2_train -tr nnUNetTrainerRNDPO`` → ``nnUNetv2_predict`` → ``nnUNetv2_evaluate_folder``.
nnU-Net's folders are created inside OUTDIR; existing environment variables are not used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nnunetv2_rndpo.synthetic import make_tiny_dataset

TRAINERS_FOLDER = Path(__file__).resolve().parents[1] / "trainers"


def run_smoke(output_folder: str | Path, dim: int = 2, device: str = "cpu", dataset_id: int = 990) -> dict:
    """Runs the smoke pipeline and returns ``{"base": test Dice, "rndpo": test Dice, "seconds": {...}}``."""
    root = Path(output_folder).resolve()
    configuration = "2d" if dim == 2 else "3d_fullres"
    dataset = f"Dataset{dataset_id:03d}_Tiny{dim}D"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"), nnUNet_extTrainer=str(TRAINERS_FOLDER),
               nnUNet_compile="f", nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1")
    config = root / "rndpo_config.json"
    bin_folder = Path(sys.executable).parent
    seconds: dict[str, float] = {}

    def stage(name: str, command: list[str], **extra_env: str) -> None:
        print(f"[{name}] {' '.join(command)}", flush=True)
        start = time.time()
        log = root / "logs" / f"{name}.log"
        with open(log, "w") as f:
            result = subprocess.run([str(bin_folder / command[0]), *command[1:]], env={**env, **extra_env},
                                    stdout=f, stderr=subprocess.STDOUT)
        seconds[name] = round(time.time() - start, 1)
        if result.returncode != 0:
            raise RuntimeError(f"stage {name} failed (exit {result.returncode}); see {log}")
        print(f"[{name}] done in {seconds[name]} s", flush=True)

    (root / "logs").mkdir(parents=True, exist_ok=True)
    if not (root / "nnUNet_raw" / dataset).is_dir():
        make_tiny_dataset(root / "nnUNet_raw", dataset_id, dim=dim)
    config.write_text(json.dumps({"num_epochs": 3, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 5,
                                  "eval_every": 1, "base_trainer": "nnUNetTrainer_rndpoSmoke",
                                  "learning_rate": 1e-4}))
    d = str(dataset_id)
    stage("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", d, "-c", configuration, "-npfp", "1", "-np", "1"],
          nnUNet_n_proc_DA="1")
    stage("train_base", ["nnUNetv2_train", d, configuration, "0", "-tr", "nnUNetTrainer_rndpoSmoke", "-device", device])
    stage("train_rndpo", ["nnUNetv2_train", d, configuration, "0", "-tr", "nnUNetTrainerRNDPO", "-device", device],
          nnUNet_rndpo_config=str(config))
    dice = {}
    for trainer, key in (("nnUNetTrainer_rndpoSmoke", "base"), ("nnUNetTrainerRNDPO", "rndpo")):
        out = root / "predictions" / trainer
        stage(f"predict_{key}", ["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / dataset / "imagesTs"), "-o", str(out),
                                 "-d", d, "-c", configuration, "-f", "0", "-tr", trainer, "-device", device,
                                 "-npp", "0", "-nps", "0", "--disable_progress_bar"])
        stage(f"evaluate_{key}", ["nnUNetv2_evaluate_folder", str(root / "nnUNet_raw" / dataset / "labelsTs"), str(out),
                                  "-djfile", str(out / "dataset.json"), "-pfile", str(out / "plans.json"), "-np", "1"])
        dice[key] = json.loads((out / "summary.json").read_text())["foreground_mean"]["Dice"]
    result = {**dice, "seconds": seconds}
    (root / "smoke_summary.json").write_text(json.dumps(result, indent=2))
    print(f"test Dice: base {dice['base']:.4f}, RN-DPO {dice['rndpo']:.4f}; total {sum(seconds.values()):.0f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="smoke_output", help="folder for nnU-Net's folders and logs")
    parser.add_argument("--dim", choices=("2d", "3d"), default="2d")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    run_smoke(args.output, dim=2 if args.dim == "2d" else 3, device=args.device)
