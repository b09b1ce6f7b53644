"""One process trains a workdir at a time: a second one stops with one error line before it
reads or writes the run, alone or in a group, and a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_cli, tree_snapshot
from tests.test_group import seed_runs
from transfusion_jax.train.group.loop import prepare_group, train_group
from transfusion_jax.train.run_lock import LOCK_NAME, RunLock, WorkdirBusyError


def test_a_second_command_on_a_workdir_in_training_stops_and_touches_nothing(
        data_dir, finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    lock = RunLock(workdir)
    lock.acquire()  # as the process training it does
    lock.announce()
    try:
        before = tree_snapshot(workdir)
        proc = run_cli(workdir, data_dir)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1, proc.stderr
        assert len(errors) == 1
        assert f"{workdir} is being trained by pid {os.getpid()} on " in errors[0]
        assert "wait for that run to end" in errors[0]
        assert tree_snapshot(workdir) == before
    finally:
        lock.release()
    assert run_cli(workdir, data_dir).returncode == 0  # free again: the finished run reports


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from transfusion_jax.train.run_lock import RunLock\n"
         "lock = RunLock(sys.argv[1]); lock.acquire(); lock.announce()\n"
         "print('held', flush=True); time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.announce()
    assert lock.held and f"pid {os.getpid()} " in (tmp_path / LOCK_NAME).read_text()
    lock.release()


def test_a_group_with_a_run_in_training_elsewhere_trains_none_of_its_runs(data_dir, tmp_path):
    runs = seed_runs(data_dir, tmp_path, seeds=(0, 1))
    busy = runs[1][2]
    busy.mkdir()
    lock = RunLock(busy)
    lock.acquire()
    lock.announce()
    try:
        with pytest.raises(WorkdirBusyError, match=f"is being trained by pid {os.getpid()} "):
            train_group(prepare_group(runs))
    finally:
        lock.release()
    assert not runs[0][2].exists()  # refused before any run of the group wrote a file
    assert sorted(p.name for p in busy.iterdir()) == [LOCK_NAME]
