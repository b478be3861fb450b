"""Cost of the preference phase next to nnU-Net's own training and inference, measured side by side in one run.

    python benchmarks/performance.py --source ../shared/data/msd_task04_hippocampus -o /tmp/rndpo_perf \
        [-device cpu|cuda] [--configurations 3d_fullres 2d] [--iterations 10] [--pool-sizes 20 200] \
        [--measure steps proposals memory cache]

Dataset: MSD Task04 Hippocampus (sorted ids): 20 labeled cases, a pool of the next ``max(--pool-sizes)``
cases (linked, not copied), nnU-Net's default plans for each configuration, a base model from
``nnUNetTrainer_rndpoSmoke``. Then, per configuration:

1. **Step cost**: seconds per iteration of ``train_step`` with the trainer's own data loading
   (``next(dataloader_train)`` included), at the planned patch and batch size, for ``nnUNetTrainer``,
   ``nnUNetTrainerRNDPO`` with every anchor off, with ``sft_weight`` 1 only, and with the default anchors
   (the default config). ``step cost`` is the ratio of the anchors-off step (the preference step alone) to
   nnU-Net's, ``default step cost`` the ratio of the default config's step.
   Each variant runs in its own process; the variants alternate ``--repeats`` times and the fastest
   repeat counts. Wall-clock seconds and the process's CPU seconds (all threads, ``time.process_time``) are
   both recorded: on a shared machine the wall clock swings with the load, the CPU time much less.
2. **Proposal cost**: K = 8 mirror-flip proposals in 3D (4 in 2D) for ``--proposal-cases`` pool cases,
   raw files → nnU-Net preprocessing → proposals in the cache, versus nnU-Net's prediction with TTA of
   the same raw files (preprocessing, prediction, export); and the same K plus 4 threshold/temperature
   proposals.
3. **Memory**: peak RSS of the main process (and peak GPU memory on CUDA) of each step-cost process, and
   of the RN-DPO trainer with pools of each ``--pool-sizes`` (first configuration only; the proposals of
   the largest pool are generated beforehand so both runs only read the cache).
4. **Cache size** per pool case (preprocessed image + proposals) versus nnU-Net's preprocessed training case.

Writes ``OUTDIR/performance.json`` after every measurement (a killed run keeps what it measured) and
prints the tables at the end. Environment: nnU-Net's variables are set inside OUTDIR; ``nnUNet_compile``
defaults to off and ``nnUNet_n_proc_DA`` to 0 (CPU) unless set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET_ID, DATASET = 990, "Dataset990_HippocampusPerf"
NUM_LABELED = 20
ANCHORS_OFF = {"sft_weight": 0.0, "consistency_weight": 0.0, "agreement_weight": 0.0}
MEASUREMENTS = ("steps", "proposals", "memory", "cache")
VARIANTS = {  # name: (trainer, config overrides)
    "nnUNetTrainer": ("nnUNetTrainer", {}),
    "RN-DPO, anchors off": ("nnUNetTrainerRNDPO", ANCHORS_OFF),
    "RN-DPO, sft only": ("nnUNetTrainerRNDPO", {**ANCHORS_OFF, "sft_weight": 1.0}),
    "RN-DPO, default anchors": ("nnUNetTrainerRNDPO", {}),
}


# ---------------------------------------------------------------------------------------------- set-up


def nnunet_command(name: str, *args: str, **env_extra: str) -> None:
    """Runs an ``nnUNetv2_*`` console script through its entry point (works with ``pip install --target`` too)."""
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    code = (f"import sys; from {entry.module} import {entry.attr}; sys.argv = {[name, *args]!r}; "
            f"sys.exit({entry.attr}())")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env_extra}, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def build_dataset(source: Path, raw: Path, pool_sizes: list[int]) -> None:
    """Labeled imagesTr/labelsTr, imagesUnlabeled (largest pool) and imagesUnlabeled<N> for smaller pools."""
    folder = raw / DATASET
    if (folder / "dataset.json").is_file():
        return
    ids = sorted(p.name[: -len(".nii.gz")] for p in (source / "imagesTr").glob("*.nii.gz"))
    if len(ids) < NUM_LABELED + max(pool_sizes):
        raise SystemExit(f"{source} has {len(ids)} cases; --pool-sizes {max(pool_sizes)} needs "
                         f"{NUM_LABELED + max(pool_sizes)}")
    labeled, pool = ids[:NUM_LABELED], ids[NUM_LABELED: NUM_LABELED + max(pool_sizes)]
    links = [("imagesTr", "imagesTr", c, "_0000") for c in labeled] + [("labelsTr", "labelsTr", c, "") for c in labeled]
    for size in pool_sizes:
        name = "imagesUnlabeled" if size == max(pool_sizes) else f"imagesUnlabeled{size}"
        links += [(name, "imagesTr", c, "_0000") for c in pool[:size]]
    for target, src, case, suffix in links:
        (folder / target).mkdir(parents=True, exist_ok=True)
        os.symlink((source / src / f"{case}.nii.gz").resolve(), folder / target / f"{case}{suffix}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": NUM_LABELED, "file_ending": ".nii.gz", "overwrite_image_reader_writer": "NibabelIO"}))


def base_folder(root: Path, configuration: str) -> Path:
    from nnunetv2_rndpo.paths import results_folder

    return results_folder(root / "results", DATASET, "nnUNetTrainer_rndpoSmoke", "nnUNetPlans", configuration)


def prepare(args, root: Path) -> None:
    build_dataset(Path(args.source).resolve(), root / "raw", args.pool_sizes)
    missing = [c for c in args.configurations if not (root / "preprocessed" / DATASET / f"nnUNetPlans_{c}").is_dir()]
    if missing:
        print(f"planning and preprocessing {missing}", flush=True)
        nnunet_command("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *missing, "-np",
                       *[str(args.processes)] * len(missing), "-npfp", str(args.processes),
                       nnUNet_n_proc_DA=str(max(1, int(os.environ["nnUNet_n_proc_DA"]))))
    for configuration in args.configurations:
        if not (base_folder(root, configuration) / "fold_0" / "checkpoint_final.pth").is_file():
            print(f"training the base model ({configuration})", flush=True)
            nnunet_command("nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", "nnUNetTrainer_rndpoSmoke",
                           "-device", args.device)


# ---------------------------------------------------------------------------------------------- workers


def rndpo_config(root: Path, configuration: str, overrides: dict, pool_size: int | None, dim: int) -> Path:
    # min_region_voxels 1: the short base's mirror flips can differ by a few voxels only (2D); the step's cost does
    # not depend on |D|, but a skipped pair would skip work, so every pair is used
    config = {"num_proposals": 8 if dim == 3 else 4, "proposal_sources": ["mirror"], "guard_num_cases": 0,
              "eval_every": 0, "base_trainer": "nnUNetTrainer_rndpoSmoke", "min_region_voxels": 1, **overrides}
    if pool_size is not None:
        config["unlabeled_dir"] = str(root / "raw" / DATASET / f"imagesUnlabeled{pool_size}")
    path = root / f"config_{hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]}.json"
    path.write_text(json.dumps(config))
    return path


def peaks(device: str) -> dict[str, float]:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def step_worker(configuration: str, trainer_name: str, iterations: int, warmup: int, device: str) -> dict:
    """Seconds per ``train_step`` including ``next(dataloader_train)``; peak memory over set-up and steps."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_ID), configuration, 0, trainer_name, "nnUNetPlans",
                                    device=torch.device(device))
    trainer.on_train_start()
    trainer.network.train()
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.train_step(next(trainer.dataloader_train))
    synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        trainer.train_step(next(trainer.dataloader_train))
    synchronize()
    result = {"seconds_per_it": (time.perf_counter() - start) / iterations,
              "cpu_seconds_per_it": (time.process_time() - cpu_start) / iterations, "batch_size": trainer.batch_size,
              "load_1min": os.getloadavg()[0],
              "patch_size": list(trainer.configuration_manager.patch_size), **peaks(device)}
    if getattr(trainer, "phase", None) is not None:
        result["pairs"] = len(trainer.phase.pairs)
        trainer.phase.restore_dataloader()
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    return result


def proposal_worker(root: Path, configuration: str, num_cases: int, device: str) -> dict:
    """Proposals (preprocessing + K flips [+ 4 threshold/temperature]) versus predict with TTA, same raw files."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_rndpo.pool import PreprocessedPool, find_cases
    from nnunetv2_rndpo.proposals import ProposalCache, generate_proposals, plan_proposals

    torch_device = torch.device(device)

    def predictor() -> nnUNetPredictor:
        p = nnUNetPredictor(use_mirroring=True, device=torch_device, allow_tqdm=False, verbose=False,
                            perform_everything_on_device=device == "cuda")
        p.initialize_from_trained_model_folder(str(base_folder(root, configuration)), use_folds=(0,),
                                               checkpoint_name="checkpoint_final.pth")
        return p

    tta, ours = predictor(), predictor()
    cases = find_cases(root / "raw" / DATASET / "imagesUnlabeled", ".nii.gz", 1)[:num_cases]
    files = [[str(f) for f in c.image_files] for c in cases]
    mirror_axes = tuple(ours.allowed_mirroring_axes or ())
    k = 2 ** len(mirror_axes)

    def time_tta(case_files) -> float:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            tta.predict_from_files_sequential(case_files, out, save_probabilities=False, overwrite=True,
                                              folder_with_segs_from_prev_stage=None)
            return time.perf_counter() - start

    def time_proposals(case_list, sources: list[str], num: int) -> float:
        specs = plan_proposals(num, sources, mirror_axes, 0)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            pool = PreprocessedPool(Path(tmp) / "pool", case_list)
            pool.preprocess(ours.plans_manager, ours.configuration_manager, ours.dataset_json, progress=False)
            generate_proposals(ProposalCache(Path(tmp) / "proposals", {"k": num}), pool, ours, specs,
                               ours.label_manager, mirror_axes, torch_device, progress=False)
            return time.perf_counter() - start

    time_tta(files[:1]), time_proposals(cases[:1], ["mirror"], k)  # warm-up
    measured = {"tta": [], "mirror": [], "mirror+4": []}
    for _ in range(2):  # alternate; the faster repeat counts
        measured["tta"].append(time_tta(files))
        measured["mirror"].append(time_proposals(cases, ["mirror"], k))
        measured["mirror+4"].append(time_proposals(cases, ["mirror", "threshold", "temperature"], k + 4))
    return {"cases": len(cases), "k": k, **{key: min(v) for key, v in measured.items()}}


def cache_sizes(root: Path, configuration: str) -> dict:
    """Mean bytes per case: nnU-Net's preprocessed training case versus our pool image + proposals."""
    from nnunetv2_rndpo.paths import rndpo_cache_folder

    ours_root = rndpo_cache_folder(root / "preprocessed", DATASET, "nnUNetPlans", configuration)
    nnunet = [p for p in (root / "preprocessed" / DATASET / f"nnUNetPlans_{configuration}").iterdir() if p.is_file()]
    n_train = len({p.name.split(".")[0].removesuffix("_seg") for p in nnunet})
    pool_images = list((ours_root / "pool").glob("*_image.npy"))
    proposals = [p for p in (ours_root / "proposals").rglob("*.npz")]
    mean = lambda files, n: sum(f.stat().st_size for f in files) / max(n, 1)  # noqa: E731
    return {"nnunet_case_bytes": mean(nnunet, n_train), "pool_image_bytes": mean(pool_images, len(pool_images)),
            "proposals_bytes": mean(proposals, len(proposals))}


def run_worker(args, kind: str, **kw) -> dict:
    """Runs one measurement in a fresh process (so its peak memory is its own) and returns its JSON."""
    command = [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kw}), "-o", args.output,
               "-device", args.device]
    env = dict(os.environ)
    if "config" in kw:
        env["nnUNet_rndpo_config"] = kw["config"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {kw} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "msd_task04_hippocampus"))
    parser.add_argument("-o", "--output", default="/tmp/rndpo_perf")
    parser.add_argument("-device", "--device", dest="device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--configurations", nargs="+", default=["3d_fullres", "2d"])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pool-sizes", type=int, nargs=2, default=[20, 200])
    parser.add_argument("--proposal-cases", type=int, default=10)
    parser.add_argument("--measure", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS),
                        help="which measurements to make (default: all)")
    parser.add_argument("--processes", type=int, default=2, help="processes for nnU-Net's planning/preprocessing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.output).resolve()
    from nnunetv2_rndpo.paths import BENCHMARK_FOLDERS, nnunet_environment

    os.environ.setdefault("nnUNet_n_proc_DA", "0" if args.device == "cpu" else "8")
    os.environ.setdefault("nnUNet_def_n_proc", str(args.processes))
    os.environ.update(nnunet_environment(root, folder_names=BENCHMARK_FOLDERS))  # keeps the two values just set

    if args.worker:
        job = json.loads(args.worker)
        if job["kind"] == "step":
            result = step_worker(job["configuration"], job["trainer"], args.iterations, args.warmup, args.device)
        else:
            result = proposal_worker(root, job["configuration"], job["cases"], args.device)
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # nnU-Net's augmentation workers must not keep the process alive

    root.mkdir(parents=True, exist_ok=True)
    prepare(args, root)
    results_file = root / "performance.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results["machine"] = machine(args.device)

    def record(key: str, value) -> None:
        results[key] = value
        results_file.write_text(json.dumps(results, indent=1))
        print(f"{key}: {json.dumps(value)}", flush=True)

    small, large = sorted(args.pool_sizes)
    for index, configuration in enumerate(args.configurations):
        dim = 2 if configuration == "2d" else 3
        steps: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for _ in range(args.repeats if "steps" in args.measure else 0):
            for name, (trainer, overrides) in VARIANTS.items():
                kw = {"configuration": configuration, "trainer": trainer}
                if trainer != "nnUNetTrainer":
                    kw["config"] = str(rndpo_config(root, configuration, overrides, small, dim))
                steps[name].append(run_worker(args, "step", **kw))
            # after every round of the variants: a run killed in a later round keeps the finished rounds
            record(f"step/{configuration}", {name: {**min(runs, key=lambda r: r["seconds_per_it"]),
                                                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                                                    "cpu_seconds_per_it": min(r["cpu_seconds_per_it"] for r in runs),
                                                    "repeats": [[r["seconds_per_it"], r["load_1min"]] for r in runs]}
                                             for name, runs in steps.items()})
        if "proposals" in args.measure:
            record(f"proposals/{configuration}", run_worker(args, "proposals", configuration=configuration,
                                                            cases=args.proposal_cases))
        if index == 0 and "memory" in args.measure:
            memory = {}
            for pool_size in (large, small, large):  # the first large run fills the cache; it is not counted
                config = rndpo_config(root, configuration, ANCHORS_OFF, None if pool_size == large else pool_size, dim)
                memory[pool_size] = run_worker(args, "step", configuration=configuration,
                                               trainer="nnUNetTrainerRNDPO", config=str(config))
            record(f"memory/{configuration}", {str(k): v for k, v in memory.items()})
        if "cache" in args.measure:
            record(f"cache/{configuration}", cache_sizes(root, configuration))
    print_tables(results, args)


def machine(device: str) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name()}, {os.cpu_count()} CPU cores"
    return f"CPU only, {os.cpu_count()} cores"


def print_tables(results: dict, args) -> None:
    """Prints the tables and writes them to ``OUTDIR/performance.txt``."""
    lines: list[str] = []
    emit = lines.append
    emit(f"\n{results['machine']}; nnUNet_n_proc_DA={os.environ['nnUNet_n_proc_DA']}; {args.iterations} timed "
          f"iterations after {args.warmup}, fastest of {args.repeats}")
    for configuration in args.configurations:
        steps = results.get(f"step/{configuration}")
        if steps:
            base = steps["nnUNetTrainer"]
            emit(f"\n{configuration}: batch {base['batch_size']}, patch {base['patch_size']}")
            emit(f"{'trainer':<28}{'s/it':>8}{'ratio':>8}{'peak RSS MB':>13}{'ratio':>7}"
                  + (f"{'peak GPU MB':>13}{'ratio':>7}" if "peak_gpu_mb" in base else ""))
            for name, r in steps.items():
                line = (f"{name:<28}{r['seconds_per_it']:>8.3f}{r['seconds_per_it'] / base['seconds_per_it']:>7.2f}×"
                        f"{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / base['peak_rss_mb']:>6.2f}×")
                if "peak_gpu_mb" in r:
                    line += f"{r['peak_gpu_mb']:>13.0f}{r['peak_gpu_mb'] / base['peak_gpu_mb']:>6.2f}×"
                emit(line)
            emit(f"step cost: {steps['RN-DPO, anchors off']['seconds_per_it'] / base['seconds_per_it']:.2f}×")
            default = steps["RN-DPO, default anchors"]
            emit(f"default step cost: {default['seconds_per_it'] / base['seconds_per_it']:.2f}×")
            if "cpu_seconds_per_it" in base:  # CPU time of the process (all its threads): less sensitive to the load
                cpu = {name: r["cpu_seconds_per_it"] / base["cpu_seconds_per_it"] for name, r in steps.items()}
                emit("CPU time per iteration (fastest repeat): " + ", ".join(
                    f"{name} {steps[name]['cpu_seconds_per_it']:.3f} s ({ratio:.2f}×)" for name, ratio in cpu.items()))
                emit(f"step cost (CPU time): {cpu['RN-DPO, anchors off']:.2f}×")
                emit(f"default step cost (CPU time): {cpu['RN-DPO, default anchors']:.2f}×")
            # the ratio within each round of alternating variants, and the machine's load
            if "repeats" in base and len(base["repeats"]) == len(default["repeats"]):
                emit("default step cost per repeat: " + ", ".join(
                    f"{d[0] / b[0]:.2f}× (load {b[1]:.1f}–{d[1]:.1f})"
                    for b, d in zip(base["repeats"], default["repeats"], strict=True)))
        p = results.get(f"proposals/{configuration}")
        if p:
            emit(f"proposals, {p['cases']} cases: predict with TTA {p['tta']:.2f} s; K={p['k']} mirror "
                  f"{p['mirror']:.2f} s ({p['mirror'] / p['tta']:.2f}×); K={p['k']}+4 threshold/temperature "
                  f"{p['mirror+4']:.2f} s ({p['mirror+4'] / p['tta']:.2f}×)")
        m = results.get(f"memory/{configuration}")
        if m:
            sizes = sorted(m, key=int)
            emit("RN-DPO peak RSS by pool size: " + ", ".join(f"{s} cases {m[s]['peak_rss_mb']:.0f} MB" for s in sizes)
                  + f" ({m[sizes[-1]]['peak_rss_mb'] / m[sizes[0]]['peak_rss_mb']:.2f}×)")
        c = results.get(f"cache/{configuration}")
        if c:
            ours = c["pool_image_bytes"] + c["proposals_bytes"]
            emit(f"cache per case: nnU-Net preprocessed {c['nnunet_case_bytes'] / 1e3:.0f} kB; ours "
                  f"{ours / 1e3:.0f} kB (image {c['pool_image_bytes'] / 1e3:.0f} + proposals "
                  f"{c['proposals_bytes'] / 1e3:.0f}) = {ours / c['nnunet_case_bytes']:.2f}×")
    text = "\n".join(lines)
    print(text)
    (Path(args.output) / "performance.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
