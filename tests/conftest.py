"""Shared fixtures: a persistent JAX compilation cache, prepared shipped data, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".jax_cache"

os.environ.setdefault("TFJ_COMPILATION_CACHE", str(CACHE))
jax.config.update("jax_compilation_cache_dir", str(CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A tfds data dir with mnist5k and digits prepared once for the whole session."""
    from transfusion_jax.config import base_config
    from transfusion_jax.data import open_source

    path = str(tmp_path_factory.mktemp("tfds"))
    for name in ("mnist5k", "digits"):
        data = base_config().data
        data.name, data.data_dir = name, path
        open_source(data, "train")
    return path


@pytest.fixture
def x64():
    """Float64 enabled for one test only (a context, so it never leaks into other tests)."""
    with jax.enable_x64(True):
        yield


def apply_overrides(config, overrides: dict):
    """Sets ``{"a.b.c": value}`` dotted keys in ``config`` (in place); returns it."""
    for key, value in overrides.items():
        section = config
        *parents, leaf = key.split(".")
        for p in parents:
            section = section[p]
        section[leaf] = value
    return config


def smoke_config(data_dir: str, **overrides):
    """The quickstart's smoke config on the session data dir, with dotted-key overrides."""
    from configs.quickstart import get_config

    config = get_config("smoke")
    config.data.data_dir = data_dir
    config.log.tensorboard = False
    return apply_overrides(config, overrides)


def cli_env(devices: int | None = 1, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess with ``devices`` CPU devices (None: as many as the
    program asks for, as a user's command gets)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["TFJ_COMPILATION_CACHE"] = str(CACHE)
    env.update(extra)
    return env


def cli_args(workdir: Path | str, data_dir: str, *overrides: str,
             config: str = "configs/quickstart.py:smoke") -> list[str]:
    return [sys.executable, "-m", "transfusion_jax.main", f"--config={config}",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            "--config.log.tensorboard=False", *overrides]


def run_cli(workdir, data_dir, *overrides, devices: int | None = 1, timeout: int = 300,
            config: str = "configs/quickstart.py:smoke", **env) -> subprocess.CompletedProcess:
    """Runs the CLI to completion and returns the finished process (output captured)."""
    return subprocess.run(cli_args(workdir, data_dir, *overrides, config=config), cwd=ROOT,
                          env=cli_env(devices, **env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def finished_run(data_dir, tmp_path_factory) -> Path:
    """The quickstart smoke run (12 steps, checkpoints 0, 8, 12), trained once per session.

    Tests that change it work on a copy (`shutil.copytree`).
    """
    from transfusion_jax.train.loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("finished_run") / "run"
    train_and_evaluate(smoke_config(data_dir), workdir)
    return workdir


def tree_snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file and folder under ``path`` with its bytes (None when ``path`` is absent):
    equal snapshots mean an untouched workdir."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(path.rglob("*"))}


def equations(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs (jit, scan, map, cond) too."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if hasattr(sub, "eqns"):
                    yield from equations(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    yield from equations(sub.jaxpr)
