"""Two study runs on one ``-o`` share a seed's work: every arm once, none lost, a stopped run's arm redone."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time

from nnunetv2_rndpo.study import Study, WorkUnit


def _units(study: Study, names: list[str], log, seconds: float = 0.0) -> list[WorkUnit]:
    """Units that record ``name: pid`` in ``log`` and their result in ``results.json`` (seed 0's arms)."""
    arms = study.results["seeds"].setdefault("0", {"arms": {}, "judges": {}})["arms"]

    def do(name: str) -> None:
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"{name} {os.getpid()}\n")
        arms[name] = {"by": os.getpid()}
        study._save()

    return [WorkUnit(f"unit_{name}", done=lambda name=name: name in arms, do=lambda name=name: do(name))
            for name in names]


def _share_all(folder, names, log):
    study = Study("synthetic", None, "smoke", folder)
    study._share(_units(study, names, log, seconds=0.2))


def test_two_runs_share_the_units_and_do_each_once(tmp_path):
    names = [f"arm{i}" for i in range(8)]
    log = tmp_path / "log.txt"
    context = multiprocessing.get_context("fork")
    runs = [context.Process(target=_share_all, args=(tmp_path, names, log)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    assert [run.exitcode for run in runs] == [0, 0]
    done = [line.split() for line in log.read_text().splitlines()]
    assert sorted(name for name, _ in done) == names  # each unit once
    assert len({pid for _, pid in done}) == 2  # both runs worked
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["seeds"]["0"]["arms"]) == set(names)


def test_a_unit_another_run_holds_is_waited_for_and_a_unit_that_needs_it_runs_after_it(tmp_path):
    study, other = Study("synthetic", None, "smoke", tmp_path), Study("synthetic", None, "smoke", tmp_path)
    log = tmp_path / "log.txt"
    held, dependent = _units(study, ["held", "dependent"], log)
    arms = study.results["seeds"]["0"]["arms"]
    dependent = WorkUnit(dependent.name, dependent.done, dependent.do, ready=lambda: "held" in arms)
    claimed = threading.Event()

    def other_run():  # holds the claim of "held", finishes it after a while
        with other._lock("unit_held"):
            claimed.set()
            time.sleep(0.5)
            other.results["seeds"]["0"] = {"arms": {"held": {"by": "other"}}, "judges": {}}
            other._save()

    thread = threading.Thread(target=other_run)
    thread.start()
    claimed.wait(5)
    study._share([held, dependent])
    thread.join()
    assert log.read_text().split()[0] == "dependent"  # "held" was not done again here
    assert arms["held"] == {"by": "other"} and "dependent" in arms


def _claim_and_stop(folder, started):
    study = Study("synthetic", None, "smoke", folder)
    with study._lock("unit_arm0"):
        started.set()
        time.sleep(60)  # killed here, before the arm is finished


def test_a_killed_runs_unit_is_done_by_the_run_that_waited_for_it(tmp_path):
    context = multiprocessing.get_context("fork")
    started = context.Event()
    stopped = context.Process(target=_claim_and_stop, args=(tmp_path, started))
    stopped.start()
    assert started.wait(10)
    threading.Timer(0.5, lambda: os.kill(stopped.pid, signal.SIGKILL)).start()
    study = Study("synthetic", None, "smoke", tmp_path)
    log = tmp_path / "log.txt"
    study._share(_units(study, ["arm0", "arm1"], log))
    stopped.join(10)
    assert sorted(line.split()[0] for line in log.read_text().splitlines()) == ["arm0", "arm1"]
