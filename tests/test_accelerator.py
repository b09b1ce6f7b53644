"""The backend a job runs on: its first log line, the stop when an accelerator was expected
(``TFJ_EXPECT_ACCELERATOR=1``) and JAX found only this machine's CPU, and
``TFJ_DISTRIBUTED=auto`` calling ``jax.distributed.initialize()`` with no arguments (as on a
TPU VM slice, where JAX finds the coordinator itself)."""

from __future__ import annotations

import logging
import re

import jax
import pytest

from tests.conftest import run_cli, tree_snapshot
from transfusion_jax import accelerator, api, parallel

DISTRIBUTED_ENV = ("TFJ_COORDINATOR", "TFJ_NUM_PROCESSES", "TFJ_PROCESS_ID",
                   "TFJ_DISTRIBUTED")


@pytest.fixture
def initialize_calls(monkeypatch) -> list:
    """Records the calls `parallel.initialize_distributed` makes to
    ``jax.distributed.initialize`` (and starts nothing)."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for name in DISTRIBUTED_ENV:
        monkeypatch.delenv(name, raising=False)
    return calls


def test_auto_calls_initialize_with_no_arguments(initialize_calls, monkeypatch):
    monkeypatch.setenv("TFJ_DISTRIBUTED", "auto")
    parallel.initialize_distributed()
    assert initialize_calls == [((), {})]


def test_no_distributed_settings_call_nothing(initialize_calls):
    parallel.initialize_distributed()
    assert initialize_calls == []


def test_explicit_settings_are_passed(initialize_calls, monkeypatch):
    monkeypatch.setattr(jax.config, "update", lambda *a: None)  # keep the collectives
    monkeypatch.setenv("TFJ_COORDINATOR", "10.0.0.2:1234")
    monkeypatch.setenv("TFJ_NUM_PROCESSES", "4")
    monkeypatch.setenv("TFJ_PROCESS_ID", "3")
    parallel.initialize_distributed()
    assert initialize_calls == [(("10.0.0.2:1234", 4, 3), {})]


def test_describe_devices_on_cpu():
    n = len(jax.devices())
    assert accelerator.describe_devices() == (
        f"backend: cpu, devices: {n} x cpu (process 0 of 1)")


def test_setup_jax_logs_the_backend(monkeypatch):
    monkeypatch.delenv(accelerator.EXPECT_ENV, raising=False)
    for name in DISTRIBUTED_ENV:
        monkeypatch.delenv(name, raising=False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    project = logging.getLogger("transfusion_jax")
    project.addHandler(handler)
    level = project.level
    project.setLevel(logging.INFO)
    try:
        api.setup_jax()
    finally:
        project.removeHandler(handler)
        project.setLevel(level)
    assert [r.getMessage() for r in records] == [accelerator.describe_devices()]


@pytest.mark.parametrize("value", ["1", "true"])
def test_expected_accelerator_on_cpu_raises(monkeypatch, value):
    monkeypatch.setenv(accelerator.EXPECT_ENV, value)
    with pytest.raises(accelerator.AcceleratorError, match=r'pip install -U "jax\[cuda12\]"'):
        accelerator.require_accelerator()


@pytest.mark.parametrize("value", ["", "0"])
def test_not_expected_accelerator_on_cpu_passes(monkeypatch, value):
    monkeypatch.setenv(accelerator.EXPECT_ENV, value)
    accelerator.require_accelerator()


def one_error_line(stderr: str) -> str:
    """The stderr of a refused run: exactly one line, the ``error:`` line."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("distributed", ["", "auto"])
def test_cli_stops_on_cpu_when_an_accelerator_is_expected(data_dir, tmp_path, distributed):
    """The real command line with a plain (CPU) JAX, as a user installs it: one error line
    naming the fix, status 1, no workdir. With ``TFJ_DISTRIBUTED=auto`` too (what the TPU
    launcher sets), where the CPU-only JAX finds no slice to join."""
    workdir = tmp_path / "run"
    proc = run_cli(workdir, data_dir, TFJ_EXPECT_ACCELERATOR="1", TFJ_DISTRIBUTED=distributed,
                   JAX_PLATFORMS="", timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "TFJ_EXPECT_ACCELERATOR=1 but JAX" in line and "found only the CPU" in line
    assert 'pip install -U "jax[cuda12]"' in line and "nvidia-smi" in line
    assert 'pip install -U "jax[tpu]"' in line and "JAX_PLATFORMS" not in line
    assert tree_snapshot(workdir) is None


def test_cli_names_a_forced_cpu_platform(data_dir, tmp_path):
    proc = run_cli(tmp_path / "run", data_dir, TFJ_EXPECT_ACCELERATOR="1", timeout=120)
    assert proc.returncode == 1
    assert "(JAX_PLATFORMS=cpu is set: unset it)" in one_error_line(proc.stderr)


def test_cli_first_log_line_names_backend_and_devices(tmp_path):
    """A job's first line on stderr is the backend and the devices (here 2 CPU devices; the
    job then stops on a dataset not prepared, which it checks after JAX starts)."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    proc = run_cli(tmp_path / "run", str(empty), "--config.data.name=cifar10", devices=2,
                   timeout=120)
    assert proc.returncode == 1
    first, *rest = proc.stderr.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d backend: cpu, devices: 2 x cpu \(process 0 of 1\)",
                        first), proc.stderr[-3000:]
    assert rest[-1].startswith("error: dataset 'cifar10' is not prepared")
