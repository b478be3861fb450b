"""Step cost and proposal cost of the preference phase against nnU-Net's own, in one run, one machine.

    python benchmarks/trainer_cost.py [--dim 3] [--iterations 20] [-o /tmp/rndpo_bench]

1. Seconds per training iteration: ``nnUNetTrainerRNDPO.train_step`` (preference term only, anchors off)
   versus ``nnUNetTrainer.train_step`` at the planned patch and batch size (both with their data loading),
   on the tiny synthetic dataset.
2. Proposal generation (K = 8 in 3D, 4 in 2D; mirror flips) for the pool versus nnU-Net's sequential
   prediction with TTA (``predict_from_files_sequential``) of the same raw cases, both in-process.
Prints a table of ratios. Uses nnU-Net's fastest CPU settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("nnUNet_compile", "f")
os.environ.setdefault("nnUNet_def_n_proc", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, choices=(2, 3), default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("-o", "--output", default="/tmp/rndpo_bench")
    args = parser.parse_args()
    root = Path(args.output).resolve()
    configuration = "2d" if args.dim == 2 else "3d_fullres"
    dataset_id = 980 + args.dim
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                      nnUNet_results=str(root / "results"),
                      nnUNet_extTrainer=str(Path(__file__).resolve().parents[1] / "trainers"))
    from nnunetv2_rndpo.synthetic import make_tiny_dataset

    bin_folder = Path(sys.executable).parent
    dataset_folder = root / "raw" / f"Dataset{dataset_id}_Tiny{args.dim}D"
    if not dataset_folder.is_dir():
        make_tiny_dataset(root / "raw", dataset_id, dim=args.dim, num_unlabeled=8)
        subprocess.run([bin_folder / "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration,
                        "-npfp", "1", "-np", "1"], check=True, env={**os.environ, "nnUNet_n_proc_DA": "1"},
                       capture_output=True)
        subprocess.run([bin_folder / "nnUNetv2_train", str(dataset_id), configuration, "0", "-tr",
                        "nnUNetTrainer_rndpoSmoke", "-device", "cpu"], check=True,
                       env={**os.environ, "nnUNet_n_proc_DA": "0"}, capture_output=True)
    os.environ["nnUNet_n_proc_DA"] = "0"
    k = 8 if args.dim == 3 else 4
    config = root / "bench_config.json"
    # the preference step alone: anchors (which add nnU-Net's supervised step) are measured separately
    config.write_text(json.dumps({"num_proposals": k, "proposal_sources": ["mirror"], "guard_num_cases": 0,
                                  "sft_weight": 0.0, "consistency_weight": 0.0, "agreement_weight": 0.0,
                                  "base_trainer": "nnUNetTrainer_rndpoSmoke", "eval_every": 0}))
    os.environ["nnUNet_rndpo_config"] = str(config)

    import shutil

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    import nnunetv2_rndpo.phase as phase_module

    shutil.rmtree(root / "preprocessed" / dataset_folder.name / "rndpo", ignore_errors=True)
    step_seconds, proposal_seconds = {}, []
    generate = phase_module.generate_proposals

    def timed_generate(*a, **kw):
        start = time.perf_counter()
        result = generate(*a, **kw)
        proposal_seconds.append(time.perf_counter() - start)
        return result

    phase_module.generate_proposals = timed_generate
    for trainer_name in ("nnUNetTrainer", "nnUNetTrainerRNDPO"):
        trainer = get_trainer_from_args(str(dataset_id), configuration, 0, trainer_name, "nnUNetPlans",
                                        device=torch.device("cpu"))
        trainer.on_train_start()
        trainer.network.train()
        trainer.train_step(next(trainer.dataloader_train))  # warm-up
        start = time.perf_counter()
        for _ in range(args.iterations):
            trainer.train_step(next(trainer.dataloader_train))
        step_seconds[trainer_name] = (time.perf_counter() - start) / args.iterations
        if trainer_name == "nnUNetTrainerRNDPO":
            trainer.phase.restore_dataloader()

    predictor = nnUNetPredictor(use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False, verbose=False,
                                perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(
        get_output_folder(dataset_id, "nnUNetTrainer_rndpoSmoke", "nnUNetPlans", configuration), use_folds=(0,),
        checkpoint_name="checkpoint_final.pth")
    ending = ".png" if args.dim == 2 else ".nii.gz"
    files = [[str(p)] for p in sorted((dataset_folder / "imagesUnlabeled").glob(f"*{ending}"))]
    start = time.perf_counter()
    predictor.predict_from_files_sequential(files, None, save_probabilities=False, overwrite=True,
                                            folder_with_segs_from_prev_stage=None)
    tta_seconds = time.perf_counter() - start

    base, ours = step_seconds["nnUNetTrainer"], step_seconds["nnUNetTrainerRNDPO"]
    print(f"\nCPU, {os.cpu_count()} cores, {configuration}, tiny synthetic dataset, {args.iterations} iterations")
    print(f"{'measure':<52}{'nnU-Net':>10}{'RN-DPO':>10}{'ratio':>8}")
    print(f"{'seconds per training iteration':<52}{base:>10.3f}{ours:>10.3f}{ours / base:>8.2f}")
    print(f"{f'proposals K={k} vs predict with TTA, {len(files)} cases (s)':<52}{tta_seconds:>10.2f}"
          f"{proposal_seconds[0]:>10.2f}{proposal_seconds[0] / tta_seconds:>8.2f}")
    print("(proposals: from preprocessed pool cases; predict: from raw files, including preprocessing and export)")


if __name__ == "__main__":
    main()
