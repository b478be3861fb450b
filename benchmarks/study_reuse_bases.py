"""Start a study folder from another study's base models: the same dataset, labeled cases and base trainer.

    python benchmarks/study_reuse_bases.py --dataset hc18 --source ../shared/data/hc18_fetal_head_us \\
        --scale cpu2 --labeled 5 --seeds 0 1 --from OLD_STUDY -o NEW_STUDY

Makes each seed's dataset in ``NEW_STUDY`` (as ``nnUNetv2_rndpo_study`` would: with the scale's validation
split), checks that its labeled and test cases are exactly those of the same seed's dataset in ``OLD_STUDY``,
then copies the base model's plans, preprocessed training cases and final checkpoint, so that the study skips
planning and base training for that seed. The RN-DPO caches (proposals of another pool) and the learned judge
are not copied. A seed whose cases differ stops the script with the reason; nothing in ``NEW_STUDY`` is
overwritten.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from nnunetv2_rndpo.datasets import MANIFEST
from nnunetv2_rndpo.study import Study

SKIPPED = ("rndpo_judge.pth", "checkpoint_best.pth")  # the judge is trained on the new pool's run; best = final here


def reuse_base(study: Study, old_root: Path, seed: int) -> dict[str, int]:
    """Copies seed ``seed``'s base model from ``old_root`` into ``study``'s folder; returns the new split sizes."""
    raw = study.make_dataset(seed)
    old_raw = old_root / "nnUNet_raw" / raw.name
    old, new = (json.loads((f / MANIFEST).read_text())["splits"] for f in (old_raw, raw))
    for split in ("labeled", "test"):
        if old[split] != new[split]:
            raise SystemExit(f"seed {seed}: the {split} cases of {raw} differ from {old_raw}; train its base instead")
    name, trainer = raw.name, f"{study.scale.base_trainer}__nnUNetPlans__{study.spec.configuration}"
    preprocessed = study.root / "nnUNet_preprocessed" / name
    if not preprocessed.exists():
        shutil.copytree(old_root / "nnUNet_preprocessed" / name, preprocessed, ignore=shutil.ignore_patterns("rndpo"))
    source, target = old_root / "nnUNet_results" / name / trainer, study.root / "nnUNet_results" / name / trainer
    (target / "fold_all").mkdir(parents=True, exist_ok=True)
    for f in [*source.glob("*.json"), *source.glob("fold_all/*")]:
        destination = target / f.relative_to(source)
        if f.is_file() and f.name not in SKIPPED and not destination.exists():
            shutil.copy2(f, destination)
    return {k: len(v) for k, v in new.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--scale", required=True)
    parser.add_argument("--labeled", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--from", dest="old", required=True, help="the study folder whose base models are reused")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    study = Study(args.dataset, args.source, args.scale, args.output, tuple(args.seeds), labeled=args.labeled)
    for seed in args.seeds:
        print(f"seed {seed}: {reuse_base(study, Path(args.old).resolve(), seed)}")


if __name__ == "__main__":
    main()
