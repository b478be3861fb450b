"""Does the default step keep the gain? The doubled batch, the split batch and the split batch with the warm-up,
paired on the same base models, from a study folder.

    nnUNetv2_rndpo_study --dataset hc18 --source ../shared/data/hc18_fetal_head_us -o STUDY --labeled 5 \
        --seeds 0 1 --sweep --no-full-label --arms "RN-DPO + sft | oracle | top_bottom" \
        "RN-DPO + sft (split batch) | oracle | top_bottom" "RN-DPO + sft (split batch, warm-up) | oracle | top_bottom"
    python benchmarks/step_check.py STUDY [-o docs/results/step_hc18_n5_cpu]

Prints (and with ``-o`` writes ``PREFIX.md`` / ``PREFIX.json``) one row per arm and seed: the base's test Dice,
peak, final, worst drop (d_0 − min_{t≥1} d_t; negative = never below the base), Δ final to the base and the
arm's wall time; then per seed the paired differences of Δ final and of the worst drop between the arms and
the doubled batch (same base model, same pairs and seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ARMS = {
    "doubled batch (former default)": "RN-DPO + sft | oracle | top_bottom",
    "split batch (default)": "RN-DPO + sft (split batch) | oracle | top_bottom",
    "split batch + warm-up 5 % (default)": "RN-DPO + sft (split batch, warm-up) | oracle | top_bottom",
}
REFERENCE = "doubled batch (former default)"


def rows(results: dict) -> tuple[list[dict], list[dict]]:
    """Per arm and seed summaries, and per seed the paired differences against ``REFERENCE``."""
    table, paired = [], []
    for seed, record in sorted(results["seeds"].items()):
        arms = {label: record["arms"][name] for label, name in ARMS.items() if name in record["arms"]}
        for label, arm in arms.items():
            s = arm["summary"]
            table.append({"seed": int(seed), "step": label, "base": s["base"], "peak": s["peak"], "final": s["final"],
                          "worst_drop": s["worst_drop"], "delta_final": s["delta_final"], "seconds": arm["seconds"]})
        if REFERENCE in arms:
            reference = arms[REFERENCE]["summary"]
            for label, arm in arms.items():
                if label != REFERENCE:
                    delta = arm["summary"]["delta_final"] - reference["delta_final"]
                    paired.append({"seed": int(seed), "step": label, "delta_final_minus_doubled": delta,
                                   "worst_drop_minus_doubled": arm["summary"]["worst_drop"] - reference["worst_drop"],
                                   "seconds_ratio": arm["seconds"] / arms[REFERENCE]["seconds"]})
    return table, paired


def markdown(table: list[dict], paired: list[dict]) -> str:
    lines = ["| seed | step | base | peak | final | worst drop | Δ final | seconds |", "|---" * 8 + "|"]
    lines += [f"| {r['seed']} | {r['step']} | {r['base']:.4f} | {r['peak']:.4f} | {r['final']:.4f} | "
              f"{r['worst_drop']:+.4f} | {r['delta_final']:+.4f} | {r['seconds']} |" for r in table]
    lines += ["", "| seed | step | Δ final − doubled's | worst drop − doubled's | wall time / doubled's |",
              "|---" * 5 + "|"]
    lines += [f"| {r['seed']} | {r['step']} | {r['delta_final_minus_doubled']:+.4f} | "
              f"{r['worst_drop_minus_doubled']:+.4f} | {r['seconds_ratio']:.2f} |" for r in paired]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study folder (or its results.json)")
    parser.add_argument("-o", "--output", default=None, help="write PREFIX.md and PREFIX.json")
    args = parser.parse_args()
    path = Path(args.study)
    results = json.loads((path / "results.json" if path.is_dir() else path).read_text())
    table, paired = rows(results)
    text = markdown(table, paired)
    print(text)
    if args.output:
        prefix = Path(args.output)
        prefix.with_suffix(".md").write_text(text)
        prefix.with_suffix(".json").write_text(json.dumps({"arms": ARMS, "rows": table, "paired": paired}, indent=1))


if __name__ == "__main__":
    main()
