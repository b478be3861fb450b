"""Wall time of one study arm before and after the two per-arm savings, in the same run on the same base.

    python benchmarks/study_arm_time.py --dataset hippocampus --source ../shared/data/msd_task04_hippocampus \
        -o STUDY_FOLDER --seed 0 --arm "DPO | oracle | top_bottom"

STUDY_FOLDER is a finished ``nnUNetv2_rndpo_study`` folder (its base model, proposals and judge scores are
reused; its results.json is not changed). The arm is trained twice, each in its own run folder beside the
study's (``seed_<s>/runs/<arm>__timing_*``):

- before: nnU-Net's final validation on (``final_validation: true``) and no cached base test Dice (the
  study's arms until both savings existed);
- after: the study's settings (``final_validation: false``) with the base test Dice read from
  ``base_test_dice.json``, which the first run wrote.

Prints both wall times, the saving and the ratio, and checks that both runs give the same test-Dice curve
(the savings must not change a number).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from nnunetv2_rndpo.evaluation import BASE_TEST_DICE_FILE
from nnunetv2_rndpo.paths import rndpo_cache_folder
from nnunetv2_rndpo.study import Study
from nnunetv2_rndpo.study_protocol import scale_arms, sweep_arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("-o", "--output", required=True, help="a finished study folder")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", default="DPO | oracle | top_bottom")
    args = parser.parse_args()

    study = Study(args.dataset, args.source, args.scale, args.output)
    s = study.scale
    arms = {a.name: a for a in scale_arms(s, False) + sweep_arms()}
    if args.arm not in arms:
        raise SystemExit(f"--arm {args.arm!r} is not a study arm; valid: {', '.join(arms)}")
    arm = arms[args.arm]
    did = study.dataset_id(args.seed)
    if study._raw(did) is None:
        raise SystemExit(f"{args.output} has no dataset for seed {args.seed}: run the study first")
    base_folder = study.train_base(did, study.scale.base_trainer)  # finished: nothing is trained
    scores = study.judge_scores(args.seed, arm.judge, hybrids=arm.hybrids)[0] if arm.judge else None
    cache = rndpo_cache_folder(study.root / "nnUNet_preprocessed", study._raw(did).name, "nnUNetPlans",
                               study.spec.configuration) / BASE_TEST_DICE_FILE
    cache.unlink(missing_ok=True)

    runs = {}
    for label, final_validation in (("before", True), ("after", False)):
        timed = replace(arm, method=f"{arm.method} timing {label}",
                        overrides={**arm.overrides, "final_validation": final_validation})
        runs[label] = study.run_arm(args.seed, timed, base_folder, scores)
        print(f"{label}: {runs[label]['seconds']} s (final_validation {final_validation}, base test Dice "
              f"{'measured' if label == 'before' else 'cached'})", flush=True)

    before, after = runs["before"]["seconds"], runs["after"]["seconds"]
    same = runs["before"]["curve"] == runs["after"]["curve"]
    print(json.dumps({"arm": args.arm, "seconds_before": before, "seconds_after": after, "saving_s": before - after,
                      "ratio_after_to_before": round(after / before, 3), "same_curve": same}, indent=1))
    if not same:
        raise SystemExit(f"the curves differ: {runs['before']['curve']} vs {runs['after']['curve']}")


if __name__ == "__main__":
    main()
