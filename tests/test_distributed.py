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


@pytest.mark.slow  # run with -m slow; a minute or more on 2 cores
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


# -- a study's runs trained together (transfusion_jax.train.group) ---------------------------

GROUP_STEPS = 40
GROUP_OVERRIDES = ("--config.job=sweep", "--config.sweep.seeds=(0,1,2)",
                   "--config.sweep.similarity=False", f"--config.train.steps={GROUP_STEPS}",
                   "--config.checkpoint.every_steps=4", "--config.checkpoint.keep_last=20",
                   "--config.checkpoint.keep_every=0", "--config.sweep.vectorize=True")
SEEDS = ("seed=0", "seed=1", "seed=2")


def run_params(workdir, step=GROUP_STEPS) -> list[np.ndarray]:
    from transfusion_jax.runs import Run

    return jax.tree.leaves(Run.open(workdir).read_variables(step))


@pytest.fixture(scope="module")
def group_sweep(data_dir, tmp_path_factory):
    """Three seeds of the quickstart's smoke model as a sweep, trained together, unbroken."""
    sweep_dir = tmp_path_factory.mktemp("group_sweep")
    check_ok(run_cli(sweep_dir, data_dir, *GROUP_OVERRIDES))
    return sweep_dir


@pytest.mark.slow  # run with -m slow; a minute or more on 2 cores
def test_killed_vectorised_sweep_resumes_equal_to_uninterrupted(data_dir, group_sweep,
                                                                tmp_path):
    import json

    proc = subprocess.Popen(cli_args(tmp_path, data_dir, *GROUP_OVERRIDES), cwd=ROOT,
                            env=cli_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name) for p in tmp_path.glob("runs/*/checkpoints/*") if p.name.isdigit()]
        if steps and max(steps) >= 8:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    statuses = {p.parent.name: json.loads(p.read_text())["status"]
                for p in tmp_path.glob("runs/*/sweep_run.json")}
    assert statuses == dict.fromkeys(SEEDS, "running")
    check_ok(run_cli(tmp_path, data_dir, *GROUP_OVERRIDES))
    for name in SEEDS:
        assert np.array_equal(losses(tmp_path / "runs" / name),
                              losses(group_sweep / "runs" / name))
        for a, b in zip(run_params(tmp_path / "runs" / name),
                        run_params(group_sweep / "runs" / name), strict=True):
            assert np.array_equal(a, b), name
    assert no_tmp_folders(tmp_path)


SHARDED_GROUPS = """
import sys
from pathlib import Path
import jax
from tests.conftest import smoke_config
from transfusion_jax.train.group.loop import prepare_group, train_group

data_dir, out = sys.argv[1], Path(sys.argv[2])
assert len(jax.devices()) == 8
for tag, seeds, devices in (("one_device", 8, jax.devices()[:1]), ("runs", 8, None),
                            ("runs_x_data", 4, None)):
    runs = [(f"seed={s}", smoke_config(data_dir, seed=s), out / tag / f"seed={s}")
            for s in range(seeds)]
    for _, config, _ in runs:
        config.model.conv_impl = "xla"  # see the test's docstring
    group = prepare_group(runs, devices)
    print(tag, dict(group.mesh.shape), flush=True)
    assert all(r.error is None for r in train_group(group))
"""


@pytest.mark.slow  # run with -m slow; a minute or more on 2 cores
def test_run_axis_sharded_over_eight_devices_equals_one_device(data_dir, tmp_path):
    """8 runs on 8 devices (``runs`` = 8), and 4 runs on a 4 x 2 ``runs`` x ``data`` mesh,
    equal the same runs stacked on one device.

    The convolutions are XLA's own: the matrix-product form's batched matmuls are blocked
    differently when the run axis is split over devices, and 12 smoke steps amplify those
    float32 roundings (1e-4 of the loss at step 4) past what a mesh test should allow. The
    forms' own agreement is `test_conv`'s."""
    import sys

    proc = subprocess.run([sys.executable, "-c", SHARDED_GROUPS, data_dir, str(tmp_path)],
                          cwd=ROOT, env=cli_env(8), capture_output=True, text=True,
                          timeout=600)
    check_ok(proc)
    assert "runs {'runs': 8, 'data': 1}" in proc.stdout
    assert "runs_x_data {'runs': 4, 'data': 2}" in proc.stdout
    for tag, seeds in (("runs", 8), ("runs_x_data", 4)):
        for s in range(seeds):
            run, reference = (tmp_path / t / f"seed={s}" for t in (tag, "one_device"))
            np.testing.assert_allclose(losses(run), losses(reference), rtol=2e-4)
            np.testing.assert_allclose(losses(run, "eval"), losses(reference, "eval"),
                                       rtol=2e-4)
            for a, b in zip(run_params(run, 12), run_params(reference, 12), strict=True):
                np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-3)
