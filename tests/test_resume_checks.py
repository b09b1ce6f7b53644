"""Resuming means what it says: settings that change saved state are checked, the loader
position survives a change of the number of processes, and a failed save keeps the last
good checkpoint."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest

from tests.conftest import smoke_config, tree_snapshot
from transfusion_jax.checkpoints import kept_steps
from transfusion_jax.config import ConfigError
from transfusion_jax.data import pipeline
from transfusion_jax.runs import read_metrics
from transfusion_jax.train.loop import train_and_evaluate
from transfusion_jax.train.resume import changed_settings


@pytest.mark.parametrize("batch_size", [32, 8], ids=["larger", "smaller"])
def test_resume_with_another_batch_size_is_refused_naming_both_values(
        batch_size, data_dir, finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    before = tree_snapshot(workdir)
    config = smoke_config(data_dir, **{"train.batch_size": batch_size, "train.steps": 16})
    with pytest.raises(ConfigError, match=rf"train.batch_size was 16, now {batch_size} \(the "
                                          r"saved data position counts batches"):
        train_and_evaluate(config, workdir)
    assert tree_snapshot(workdir) == before


def test_settings_that_may_change_do_not_block_a_resume(data_dir, finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    config = smoke_config(data_dir, **{"train.steps": 16, "data.num_threads": 2})
    summary = train_and_evaluate(config, workdir)  # resumes at 12, ends at 16
    assert summary["files"]["checkpoint_steps"][-1] == 16
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [4, 8, 12, 16]


def test_changed_settings_lists_each_key_with_both_values():
    saved = {"seed": 0, "data": {"name": "mnist5k", "data_dir": "/a", "train_examples": 256},
             "train": {"batch_size": 16, "optimizer": {"name": "sgd"}, "weight_decay": 0.0}}
    current = {"seed": 0, "data": {"name": "mnist5k", "data_dir": "/b", "train_examples": 128},
               "train": {"batch_size": 16, "optimizer": {"name": "sgd"}, "weight_decay": 1e-4}}
    assert changed_settings(saved, current) == [
        ("data.train_examples", 256, 128), ("train.weight_decay", "off", "on")]
    assert changed_settings(saved, saved) == []


def test_loader_position_survives_a_change_in_the_number_of_processes(data_dir, monkeypatch):
    """State saved by 1 process, restored on each of 2: together they read the next global
    batch exactly (and vice versa the saved state is the same count of global batches)."""
    from transfusion_jax.data import open_source

    config = smoke_config(data_dir)
    source, _ = open_source(config.data, "train")

    def batches(processes: int, index: int, state=None, steps: int = 1):
        monkeypatch.setattr(pipeline, "_process_layout",
                            lambda size: (size // processes, index, processes))
        dataset = pipeline.train_dataset(source, config.data, 16, seed=0)
        iterator = pipeline.train_iterator(dataset, 1, state)
        out = [next(iterator) for _ in range(steps)]
        return out, iterator.get_state()

    first, state_one = batches(1, 0, steps=5)
    nxt, _ = batches(1, 0, state_one)
    halves = [batches(2, p, state_one)[0][0] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), nxt[0]["image"])
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), nxt[0]["label"])
    _, state_two = batches(2, 1, steps=5)
    assert state_two == state_one  # the position counts global batches on any process count


def test_a_disk_that_fills_during_a_save_keeps_the_last_good_checkpoint(
        data_dir, tmp_path, monkeypatch, capsys):
    """Orbax's JSON writer fails with ENOSPC on step 8: one error line naming the step and
    the newest complete checkpoint (4), which stays readable; re-running resumes from it."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler

    from transfusion_jax.main import main

    original = json_handler.JsonCheckpointHandler._save_fn

    async def disk_full_at_step_8(self, x, directory):
        if isinstance(x, dict) and x.get("step") == 8:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return await original(self, x, directory)

    monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", disk_full_at_step_8)
    workdir = tmp_path / "run"
    argv = ["main", "--config=configs/quickstart.py:smoke", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.log.tensorboard=False"]
    assert main(argv) == 1
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "could not save step 8" in errors[0] and "No space left on device" in errors[0]
    assert "the newest complete checkpoint is still step 4" in errors[0]
    assert kept_steps(workdir / "checkpoints") == [0, 4]
    monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", original)
    summary = train_and_evaluate(smoke_config(data_dir), workdir)  # the space is back
    assert summary["files"]["checkpoint_steps"] == [0, 8, 12]
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [4, 8, 12]
