"""Where a training step's time goes: torch.profiler over ``train_step`` of one trainer variant.

    python benchmarks/profile_step.py -o /tmp/rndpo_perf [--configuration 3d_fullres] \
        [--variant "RN-DPO, default anchors"] [--iterations 5] [--rows 25]

Reuses the dataset, base model and proposal cache that ``benchmarks/performance.py -o OUTDIR`` made (run it
first). Prints torch.profiler's operator table (self CPU time) and the time per named stage of the step
(``record_function`` ranges this script puts around data loading, ``train_step``, the policy forward, the
reference forward, the preference loss with its anchors, and backward + optimizer step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from performance import DATASET_ID, VARIANTS, rndpo_config  # noqa: E402

from nnunetv2_rndpo.paths import BENCHMARK_FOLDERS, nnunet_environment  # noqa: E402


def timed(name: str, function):
    """``function`` inside a torch.profiler range called ``name``."""
    import torch

    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(name):
            return function(*args, **kwargs)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="/tmp/rndpo_perf", help="performance.py's OUTDIR")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--variant", default="RN-DPO, default anchors", choices=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    root = Path(args.output).resolve()
    os.environ.update(nnunet_environment(root, folder_names=BENCHMARK_FOLDERS))
    trainer_name, overrides = VARIANTS[args.variant]
    if trainer_name != "nnUNetTrainer":
        os.environ["nnUNet_rndpo_config"] = str(rndpo_config(root, args.configuration, overrides, 20,
                                                             2 if args.configuration == "2d" else 3))
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from torch.profiler import ProfilerActivity, profile

    trainer = get_trainer_from_args(str(DATASET_ID), args.configuration, 0, trainer_name, "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.on_train_start()
    trainer.network.train()
    trainer.train_step(next(trainer.dataloader_train))  # warm-up
    # named ranges around the parts of a step, set here so that the trainer itself carries no profiling code
    trainer.network.forward = timed("step/policy forward", trainer.network.forward)
    if getattr(trainer, "phase", None) is not None:
        reference = trainer.phase.reference
        reference.forward = timed("step/reference forward (no autograd)", reference.forward)
        trainer.preference_step = timed("step/preference loss and anchors (incl. reference)", trainer.preference_step)
        trainer.phase.backward_and_step = timed("step/backward and optimizer", trainer.phase.backward_and_step)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.iterations):
            with torch.profiler.record_function("step/data"):
                batch = next(trainer.dataloader_train)
            with torch.profiler.record_function("step/train_step"):
                trainer.train_step(batch)
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    stages = {e.key: e.cpu_time_total / 1e6 / args.iterations for e in table if e.key.startswith("step/")}
    print(json.dumps({"variant": args.variant, "seconds_per_it_by_stage": stages}, indent=1))
    if getattr(trainer, "phase", None) is not None:
        trainer.phase.restore_dataloader()
    os._exit(0)


if __name__ == "__main__":
    main()
