"""The fold lock and the finished-fold refusal (fast, no training)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from nnunetv2_rndpo.fold_lock import (
    LOCK_FILE,
    FinishedFoldError,
    FoldLock,
    FoldLockedError,
    read_lock,
    refuse_finished_fold,
)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, **info):
    (folder / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                "started": "2026-01-01 10:00:00", "command": "nnUNetv2_train 4 2d 0",
                                                **info}))


def test_acquire_writes_who_holds_it_and_release_removes_it(tmp_path):
    lock = FoldLock(tmp_path)
    lock.acquire()
    info = read_lock(tmp_path / LOCK_FILE)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and "started" in info
    assert "command" in info
    lock.release()
    lock.release()  # twice is fine (atexit and the end of the run)
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_lock_appears_with_its_holder_written_and_leaves_no_other_file(tmp_path, monkeypatch):
    seen = []
    link = os.link

    def watched_link(source, target):
        assert not os.path.exists(target)
        seen.append(read_lock(source))  # what the lock will hold, the moment it appears
        link(source, target)

    monkeypatch.setattr(os, "link", watched_link)
    lock = FoldLock(tmp_path)
    lock.acquire()
    assert seen == [read_lock(tmp_path / LOCK_FILE)] and seen[0]["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_without_hard_links_the_lock_is_still_taken_once(tmp_path, monkeypatch):
    def no_link(source, target):
        raise PermissionError("hard links are not supported here")

    monkeypatch.setattr(os, "link", no_link)
    lock = FoldLock(tmp_path)
    lock.acquire()
    assert read_lock(tmp_path / LOCK_FILE)["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]
    with pytest.raises(FoldLockedError, match="Another run is training this fold"):
        FoldLock(tmp_path).acquire()
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_is_refused_with_the_first_runs_details(tmp_path):
    write_lock(tmp_path, pid=os.getpid())  # this process is alive
    with pytest.raises(FoldLockedError, match=r"Another run is training this fold: pid \d+ on host .* since "
                                              r"2026-01-01 10:00:00 \(command: nnUNetv2_train 4 2d 0\)") as error:
        FoldLock(tmp_path).acquire()
    assert "Wait for it to finish" in str(error.value) and f"delete {tmp_path / LOCK_FILE}" in str(error.value)
    assert read_lock(tmp_path / LOCK_FILE)["started"] == "2026-01-01 10:00:00"  # the other run's lock is kept


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    warnings = []
    lock = FoldLock(tmp_path)
    lock.acquire(log=warnings.append)
    assert read_lock(tmp_path / LOCK_FILE)["pid"] == os.getpid()
    assert len(warnings) == 1 and f"pid {pid}" in warnings[0] and "no longer runs" in warnings[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
    lock.release()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    write_lock(tmp_path, pid=dead_pid(), host="gpu-node-17")
    with pytest.raises(FoldLockedError, match="on host gpu-node-17.*it is on another host"):
        FoldLock(tmp_path).acquire()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = FoldLock(tmp_path)
    lock.acquire()
    write_lock(tmp_path, pid=os.getpid() + 1)  # someone replaced it (deleted ours by hand and started)
    lock.release()
    assert (tmp_path / LOCK_FILE).is_file()


def test_a_fresh_run_into_a_finished_fold_is_refused_unless_asked(tmp_path):
    refuse_finished_fold(tmp_path, "nnUNetTrainerRNDPO", overwrite=False)  # unfinished: fine
    (tmp_path / "checkpoint_final.pth").write_bytes(b"model")
    with pytest.raises(FinishedFoldError, match="this fold of nnUNetTrainerRNDPO has finished") as error:
        refuse_finished_fold(tmp_path, "nnUNetTrainerRNDPO", overwrite=False)
    assert "--c" in str(error.value) and '"overwrite_finished_fold": true' in str(error.value)
    refuse_finished_fold(tmp_path, "nnUNetTrainerRNDPO", overwrite=True)
