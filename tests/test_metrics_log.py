"""The preference phase's metrics log (fast, no training): rndpo_metrics.jsonl rows, resume, plot, logger keys."""

from __future__ import annotations

import json
import warnings

import pytest

from nnunetv2_rndpo.metrics_log import LOSS_TERMS, METRIC_KEYS, MetricsLog, register_logger_keys


def test_a_fresh_run_replaces_the_file_by_row_zero_and_appends_one_row_per_epoch(tmp_path):
    log = MetricsLog(tmp_path)
    (tmp_path / "rndpo_metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1, "eval/dice": 0.5}\n')  # an old run
    log.start({"eval/dice": 0.8})
    log.append(1, {"rewards/margins": 0.25, "guard/kl": 0.01})
    assert log.rows() == [{"epoch": 0, "eval/dice": 0.8}, {"epoch": 1, "rewards/margins": 0.25, "guard/kl": 0.01}]
    lines = (tmp_path / "rndpo_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # one JSON object per line, the file format


def test_resuming_drops_the_rows_after_the_checkpoint_and_a_line_cut_by_a_kill(tmp_path):
    log = MetricsLog(tmp_path)
    for epoch in range(4):
        log.append(epoch, {"loss": float(epoch)})
    with open(log.path, "a") as f:
        f.write('{"epoch": 4, "lo')  # the run was killed while writing
    assert [r["epoch"] for r in log.rows()] == [0, 1, 2, 3]  # the cut line is left out when reading
    log.truncate(2)
    assert log.rows() == [{"epoch": 0, "loss": 0.0}, {"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 2.0}]
    assert log.path.read_text().endswith("}\n")


def test_without_a_file_there_are_no_rows_and_truncating_creates_none(tmp_path):
    log = MetricsLog(tmp_path)
    assert log.rows() == []
    log.truncate(3)
    assert not log.path.exists()


def test_the_progress_plot_warns_about_nothing_when_a_panel_has_no_data(tmp_path):
    rows = [{"epoch": 0}, {"epoch": 1, "rewards/margins": 0.1, "loss/preference": 0.6}]  # no guard, no eval/dice
    (tmp_path / "rndpo_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetricsLog(tmp_path).plot()
    assert (tmp_path / "rndpo_progress.png").stat().st_size > 0


def test_registered_keys_can_be_logged_by_nnunet_and_keep_their_restored_values():
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    logger = MetaLogger("unused", resume=False)
    logger.local_logger.my_fantastic_logging["rewards/margins"] = [0.1, 0.2]  # restored from a checkpoint by --c
    register_logger_keys(logger, (*METRIC_KEYS, *LOSS_TERMS, "pairs/skipped"))
    assert logger.get_value("rewards/margins", step=None) == [0.1, 0.2]
    logger.log("rewards/margins", 0.3, 2)
    logger.log("loss/sft", 0.5, 0)
    assert logger.get_value("rewards/margins", step=2) == 0.3 and logger.get_value("loss/sft", step=0) == 0.5
    with pytest.raises(AssertionError):  # why register: nnU-Net's logger takes no key it does not know
        logger.log("eval/dice", 0.8, 0)
