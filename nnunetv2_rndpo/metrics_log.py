"""The preference phase's per-epoch metrics: ``rndpo_metrics.jsonl``, its plot, and nnU-Net's logger keys.

``rndpo_metrics.jsonl`` in the fold folder holds one JSON object per line, ``{"epoch": epochs done, key:
value, ...}``: row 0 before the first step (``eval/dice`` of the base model when a test set exists), then one
row per epoch (the keys below, ``judge/*``, ``guard/*`` and ``eval/dice`` when evaluated).
``rndpo_progress.png`` plots them. Only rank 0 writes either file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from nnunetv2_rndpo.atomic_files import atomic_write_text, read_jsonl

METRIC_KEYS = (
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "region/size_mean", "region/frac",
)
LOSS_TERMS = ("loss/preference", "loss/consistency", "loss/agreement", "loss/sft")
METRICS_FILE = "rndpo_metrics.jsonl"
PLOT_FILE = "rndpo_progress.png"
PLOT_PANELS = (("rewards/margins", "rewards/accuracies"), ("logps/chosen", "logps/rejected"), LOSS_TERMS,
               ("guard/kl",), ("eval/dice",))


def register_logger_keys(logger, keys: Iterable[str]) -> None:
    """Lets nnU-Net's ``MetaLogger`` take ``keys`` (its ``LocalLogger`` asserts that a logged key exists).

    The lists are saved and restored with nnU-Net's checkpoints, so a key already there keeps its values.
    ``eval/dice`` is never one of them: it exists every ``eval_every`` epochs, while nnU-Net's logger wants one
    value per epoch; it is written to ``rndpo_metrics.jsonl`` only.
    """
    logging = logger.local_logger.my_fantastic_logging
    for key in keys:
        logging.setdefault(key, [])


class MetricsLog:
    """``rndpo_metrics.jsonl`` and ``rndpo_progress.png`` of one fold folder.

    Args:
        fold_folder: the trainer's ``output_folder`` (``.../fold_F``).
    """

    def __init__(self, fold_folder: Path | str):
        self.path = Path(fold_folder) / METRICS_FILE
        self.plot_path = Path(fold_folder) / PLOT_FILE

    def start(self, row: dict) -> None:
        """A fresh run: replaces any earlier file by one holding row 0 (``{"epoch": 0, **row}``)."""
        self.path.unlink(missing_ok=True)
        self.append(0, row)

    def append(self, epochs_done: int, row: dict) -> None:
        """Adds the row ``{"epoch": epochs_done, **row}``."""
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epochs_done, **row}) + "\n")

    def truncate(self, epochs_done: int) -> None:
        """On ``--c``: drops rows written after the checkpoint we resume from (and a line cut off by a kill)."""
        if self.path.is_file():
            rows = [json.dumps(r) for r in self.rows() if r["epoch"] <= epochs_done]
            atomic_write_text(self.path, "".join(r + "\n" for r in rows))

    def rows(self) -> list[dict]:
        """The rows of ``rndpo_metrics.jsonl`` (none without the file); a last line cut off by a killed run is left
        out."""
        return read_jsonl(self.path) if self.path.is_file() else []

    def plot(self) -> None:
        """Writes ``rndpo_progress.png``: one panel per group of ``PLOT_PANELS`` against the epochs done; a panel
        without values says so instead of drawing an empty legend."""
        import matplotlib

        matplotlib.use("agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        fig, axes = plt.subplots(len(PLOT_PANELS), 1, figsize=(8, 3 * len(PLOT_PANELS)))
        for ax, keys in zip(axes, PLOT_PANELS, strict=True):
            for key in keys:
                points = [(r["epoch"], r[key]) for r in rows if key in r]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=key)
            if ax.lines:  # legend() of an empty panel warns, every epoch (guard off, eval_every 0, no anchors)
                ax.legend(loc="best")
            else:
                ax.text(0.5, 0.5, f"{', '.join(keys)}: not measured in this run", ha="center", va="center",
                        transform=ax.transAxes)
            ax.set_xlabel("epochs done")
        fig.tight_layout()
        fig.savefig(self.plot_path)
        plt.close(fig)
