"""Whole runs in subprocesses: 1 vs 8 devices, 2 processes vs 1, killed-and-resumed vs not.

Each run trains the quickstart's smoke model for 40 steps through the CLI. Runs on several
devices or processes must match the 1-device run within float tolerance (a different
reduction order); a run killed with SIGKILL and restarted must match it exactly.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from tests.conftest import ROOT, cli_args, cli_env, run_cli, smoke_config
from tests.test_train_loop import no_tmp_folders, restore_state
from transfusion_jax.runs import read_metrics

pytestmark = pytest.mark.multiprocess

STEPS = 40
OVERRIDES = (f"--config.train.steps={STEPS}", "--config.checkpoint.every_steps=4",
             "--config.checkpoint.keep_last=20", "--config.eval.every_steps=20",
             "--config.log.every_steps=4")


def config_of(data_dir):
    return smoke_config(data_dir, **{"train.steps": STEPS, "checkpoint.every_steps": 4,
                                     "checkpoint.keep_last": 20, "eval.every_steps": 20,
                                     "log.every_steps": 4})


def losses(workdir, split="train") -> np.ndarray:
    return np.array([r["loss"] for r in read_metrics(workdir) if r["split"] == split])


def final_params(data_dir, workdir) -> list[np.ndarray]:
    state = restore_state(config_of(data_dir), workdir)
    assert int(state.step) == STEPS
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def assert_same_run(data_dir, workdir, reference) -> None:
    """Train/eval losses and final parameters equal the reference run's, within float
    tolerance (another reduction order)."""
    np.testing.assert_allclose(losses(workdir), losses(reference), rtol=2e-4)
    np.testing.assert_allclose(losses(workdir, "eval"), losses(reference, "eval"), rtol=2e-4)
    for a, b in zip(final_params(data_dir, workdir), final_params(data_dir, reference),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-3)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def one_device_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    check_ok(run_cli(workdir, data_dir, *OVERRIDES, devices=1))
    return workdir


def test_eight_devices_match_one(data_dir, one_device_run, tmp_path):
    proc = run_cli(tmp_path, data_dir, *OVERRIDES, devices=8)
    check_ok(proc)
    assert len(losses(tmp_path)) == STEPS // 4
    assert_same_run(data_dir, tmp_path, one_device_run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(data_dir, one_device_run, tmp_path):
    port = free_port()
    procs = [subprocess.Popen(
        cli_args(tmp_path, data_dir, *OVERRIDES), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=cli_env(1, TFJ_COORDINATOR=f"127.0.0.1:{port}", TFJ_NUM_PROCESSES="2",
                    TFJ_PROCESS_ID=str(i))) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert_same_run(data_dir, tmp_path, one_device_run)
    assert no_tmp_folders(tmp_path)


def test_killed_and_resumed_run_equals_uninterrupted(data_dir, one_device_run, tmp_path):
    proc = subprocess.Popen(cli_args(tmp_path, data_dir, *OVERRIDES), cwd=ROOT,
                            env=cli_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
        if steps and max(steps) >= 8:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = max(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    assert 8 <= killed_at < STEPS
    check_ok(run_cli(tmp_path, data_dir, *OVERRIDES, devices=1))
    assert np.array_equal(losses(tmp_path), losses(one_device_run))
    for a, b in zip(final_params(data_dir, tmp_path), final_params(data_dir, one_device_run),
                    strict=True):
        assert np.array_equal(a, b)
    assert no_tmp_folders(tmp_path)
