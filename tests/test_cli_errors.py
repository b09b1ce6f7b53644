"""Bad input through the real command line: one clear line, non-zero exit, nothing written."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("override,expected", [
    ("--config.train.stpes=5",
     "unknown config key 'stpes' (Did you mean \"steps\"?)"),
    ("--config.train.steps=abc", "--config.train.steps=abc: invalid literal for int()"),
    ("--config.model.name=resnet5",
     "model.name='resnet5' is not valid (did you mean 'resnet50'?); choose one of:"),
    ("--config.train.optimizer.name=adamw",
     "train.optimizer.name='adamw' is not valid (did you mean 'adam'?)"),
    ("--config.init.name=meanvar", "init.name='meanvar' is not valid"),
    ("--config.train.batch_size=0", "train.batch_size=0 must be a positive number"),
    ("--config.data.name=cifar10", "dataset 'cifar10' is not prepared: tfds looked in"),
])
def test_bad_config_gives_one_line_error(override, expected, data_dir, tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli(workdir, data_dir, override, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (workdir / "checkpoints").exists() or not list((workdir / "checkpoints").iterdir())
