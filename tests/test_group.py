"""Runs trained together (transfusion_jax.train.group): the same results and files as the
same runs trained one after another, runs cut off at different steps resumed exactly, the
grouping of a mixed grid, and bad input (an unknown sweep.vectorize, a model that cannot be
mapped over runs) as one error naming the fallback."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.conftest import run_cli, smoke_config, tree_snapshot
from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.experiments.grid import expand_grid, init_variants, read_status
from transfusion_jax.experiments.grouping import plan_groups, why_alone
from transfusion_jax.experiments.sweep import run_sweep
from transfusion_jax.runs import Run, read_metrics
from transfusion_jax.train.group.loop import prepare_group, train_group
from transfusion_jax.train.group.rules import differences, shared_settings

SMOKE = "configs/recipe_transfusion.py:smoke"
INITS = ("random", "pretrained", "mean_var", "transfusion:1", "shuffled")
RUNS = ("init=mean_var,seed=0", "init=pretrained,seed=0", "init=random,seed=0",
        "init=shuffled,seed=0", "init=transfusion_k1,seed=0")


def smoke_sweep(data_dir: str, **sweep):
    config = load_config(SMOKE)
    config.data.data_dir = data_dir
    config.log.tensorboard = False
    config.sweep.seeds = (0,)
    config.sweep.similarity = False
    config.sweep.axes.init = init_variants(list(INITS))  # every strategy reading a stage
    for key, value in sweep.items():
        config.sweep[key] = value
    return config


def params(run: Run, step: int) -> list[np.ndarray]:
    return jax.tree.leaves(run.read_variables(step))


def same_records(a: list[dict], b: list[dict], rtol: float) -> None:
    """Equal metric lines: the same steps, splits and keys, values within ``rtol``."""
    assert [(r["step"], r["split"], sorted(r)) for r in a] == [
        (r["step"], r["split"], sorted(r)) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in set(ra) - {"step", "split", "time"}:
            if ra[key] is None or rb[key] is None:
                assert ra[key] == rb[key], (ra["step"], ra["split"], key)
            else:
                np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=1e-6,
                                           err_msg=f"{ra['split']} {key} at {ra['step']}")


# -- which runs train together ----------------------------------------------------------------

def test_a_mixed_grid_splits_into_groups_and_lone_runs_say_why(tmp_path):
    config = load_config(SMOKE)
    config.sweep.axes.width = {"thin": {"model": {"options": {"width": 0.125}}},
                               "wide": {"model": {"options": {"width": 0.25}}}}
    config.sweep.axes.lr = {"a": {"train": {"schedule": {"base_lr": 0.05}}},
                            "b": {"train": {"schedule": {"name": "constant", "base_lr": 0.1}}}}
    runs = expand_grid(config, tmp_path)  # 3 inits x 2 widths x 2 schedules x 2 seeds
    key = lambda r: shared_settings(r.config)  # noqa: E731
    groups = plan_groups(runs, key)
    assert sorted(len(g) for g in groups) == [12, 12]
    for group in groups:  # one width each; inits, schedules and seeds mixed
        assert len({r.config.model.options.width for r in group}) == 1
        assert len({r.axes["init"] for r in group}) == 3 and {r.seed for r in group} == {0, 1}
        assert len({r.config.train.schedule.name for r in group}) == 2
    assert [len(g) for g in plan_groups(runs, key, max_size=5)] == [4] * 6
    order = [r.name for r in runs]
    for group in groups:  # grid order kept within a group
        assert [r.name for r in group] == sorted((r.name for r in group), key=order.index)
    odd = runs[0].config.copy_and_resolve_references()
    odd.train.batch_size = 32
    lone = dataclasses.replace(runs[0], name="odd", config=odd)
    assert sorted(len(g) for g in plan_groups([lone, *runs[1:]], key)) == [1, 11, 12]
    why = why_alone(lone, [lone, *runs[1:]], lambda a, b: differences(a.config, b.config),
                    lambda r: r.name)
    closest = next(r for r in runs[1:] if r.axes["width"] == lone.axes["width"])
    assert why.endswith(f"from the closest ({closest.name}) in train.batch_size"), why
    twin = next(r for r in runs if r.seed == 1 and r.axes == runs[0].axes)
    assert shared_settings(runs[0].config) == shared_settings(twin.config)


def test_unknown_vectorize_value_is_one_error_naming_the_fallback(data_dir, tmp_path):
    proc = run_cli(tmp_path / "sweep", data_dir, "--config.sweep.vectorize=maybe",
                   config=SMOKE, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "sweep.vectorize='maybe' is not valid" in errors[0]
    assert "False (one run after another, the fallback)" in errors[0]
    assert "'auto' (the default: together on GPU/TPU, one after another on CPU)" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "sweep").exists()


class LoggedCBR(nn.Module):
    """A CBR whose forward pass reports to the host through an ordered callback, which
    ``jax.vmap`` cannot map."""

    inner: nn.Module

    def block_names(self):
        return self.inner.block_names()

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        jax.experimental.io_callback(lambda v: None, None, x.sum(), ordered=True)
        return self.inner(x, train=train)


def test_a_model_that_cannot_be_vmapped_names_the_fallback(data_dir, tmp_path, monkeypatch):
    import jax.experimental  # noqa: F401

    from transfusion_jax import models

    cbr_tiny = models.MODELS["cbr_tiny"]

    @functools.wraps(cbr_tiny)  # its options are checked against cbr_tiny's signature
    def logged_cbr(num_classes, **options):
        return LoggedCBR(cbr_tiny(num_classes, **options))

    monkeypatch.setitem(models.MODELS, "logged_cbr", logged_cbr)
    config = smoke_sweep(data_dir, vectorize=True)
    config.model.name = "logged_cbr"
    with pytest.raises(ConfigError, match=r"model 'logged_cbr' cannot be trained vectorised "
                                          r"\(jax.vmap of its train step fails: ValueError: "
                                          r"Cannot `vmap` ordered IO callback.*set "
                                          r"sweep.vectorize=False"):
        run_sweep(config, tmp_path)
    assert not list(tmp_path.iterdir())  # checked before the stage or any run was trained


def test_auto_vectorizes_on_accelerators_only_and_falls_back_for_unvmappable_models(
        data_dir, tmp_path, monkeypatch, caplog):
    from transfusion_jax import models
    from transfusion_jax.experiments import sweep

    assert sweep.vectorizes("auto", "gpu") and sweep.vectorizes("auto", "tpu")
    assert not sweep.vectorizes("auto", "cpu")
    assert sweep.vectorizes(True, "cpu") and not sweep.vectorizes(False, "gpu")
    assert load_config(SMOKE).sweep.vectorize == "auto"  # the default
    config = smoke_sweep(data_dir)
    runs = expand_grid(config, tmp_path)
    with caplog.at_level("INFO", logger=sweep.__name__):  # on this CPU: one after another
        assert sweep._plan(config, runs, tmp_path) == [([r], None) for r in runs]
    assert f"sweep.vectorize=auto trains the {len(runs)} runs one after another on CPU" \
        in caplog.text
    caplog.clear()
    # As if on a GPU: a model that cannot be mapped over runs falls back instead of failing.
    monkeypatch.setattr(sweep, "vectorizes", lambda setting, backend=None: True)
    monkeypatch.setitem(models.MODELS, "logged_cbr", functools.wraps(models.MODELS["cbr_tiny"])(
        lambda num_classes, **options: LoggedCBR(models.MODELS["cbr_tiny"](num_classes,
                                                                            **options))))
    config.model.name = "logged_cbr"
    runs = expand_grid(config, tmp_path)
    with caplog.at_level("INFO", logger=sweep.__name__):
        assert sweep._plan(config, runs, tmp_path) == [([r], None) for r in runs]
    assert "cannot be trained vectorised" in caplog.text
    assert not list(tmp_path.iterdir())  # planning writes nothing


# -- the same runs, trained together or one after another ------------------------------------

@pytest.fixture(scope="module")
def both_ways(data_dir, tmp_path_factory):
    """The smoke study's three runs (one seed), vectorised and sequential."""
    out = {}
    for vectorize in (True, False):
        sweep_dir = tmp_path_factory.mktemp(f"vectorize_{vectorize}")
        result = run_sweep(smoke_sweep(data_dir, vectorize=vectorize), sweep_dir)
        assert set(result["runs"]) == set(RUNS) and set(result["runs"].values()) == {"finished"}
        out[vectorize] = sweep_dir
    return out


@pytest.mark.parametrize("name", RUNS)
def test_vectorised_runs_equal_sequential_runs(both_ways, name):
    together, alone = (both_ways[v] / "runs" / name for v in (True, False))
    assert read_status(together)["trained_with"] == len(RUNS)
    assert "trained_with" not in read_status(alone)
    files = {p.name for p in alone.iterdir()}
    assert files >= {"metrics.jsonl", "summary.json", "summary.md", "curves.png",
                     "sweep_run.json", "checkpoints"}
    assert {p.name for p in together.iterdir()} == files
    a, b = Run.open(together), Run.open(alone)
    assert a.steps == b.steps == [0, 12]  # step 0 kept, keep_last = 1
    for x, y in zip(params(a, 0), params(b, 0), strict=True):
        np.testing.assert_array_equal(x, y)  # each run keeps its own initialisation
    same_records(read_metrics(together), read_metrics(alone), rtol=1e-4)
    for x, y in zip(params(a, 12), params(b, 12), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)
    assert a.summary["convergence"] == b.summary["convergence"]  # same steps to threshold
    assert a.summary["final_evals"].keys() == b.summary["final_evals"].keys()


def test_the_report_reads_vectorised_runs_as_sequential_ones(both_ways):
    tables = [json.loads((both_ways[v] / "aggregate/aggregate.json").read_text())
              for v in (True, False)]
    steps = [{g["label"]: g["run_steps"] for g in t["groups"]} for t in tables]
    assert steps[0] == steps[1] and len(steps[0]) == len(RUNS)


# -- runs cut off at different steps ---------------------------------------------------------

def seed_runs(data_dir, workdir, seeds=(0, 1, 2)):
    configs = [smoke_config(data_dir, **{"seed": s, "checkpoint.keep_last": 20,
                                         "checkpoint.keep_every": 0}) for s in seeds]
    configs[1].train.schedule.base_lr = 0.1  # schedules may differ within a group
    return [(f"seed={s}", c, workdir / f"seed={s}") for s, c in zip(seeds, configs,
                                                                     strict=True)]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("group")
    results = train_group(prepare_group(seed_runs(data_dir, workdir)))
    assert all(r.error is None for r in results)
    return workdir


def test_runs_cut_off_at_different_steps_resume_to_the_same_end(data_dir, uninterrupted,
                                                               tmp_path):
    workdir = tmp_path / "group"
    shutil.copytree(uninterrupted, workdir)
    for name, kept in (("seed=0", 4), ("seed=1", 8)):  # seed=2 is finished
        for step_dir in (workdir / name / "checkpoints").iterdir():
            if step_dir.name.isdigit() and int(step_dir.name) > kept:
                shutil.rmtree(step_dir)
        (workdir / name / "summary.json").unlink()
    results = train_group(prepare_group(seed_runs(data_dir, workdir)))
    assert all(r.error is None for r in results)
    for name in ("seed=0", "seed=1", "seed=2"):
        a, b = Run.open(workdir / name), Run.open(uninterrupted / name)
        assert a.steps == b.steps == [0, 4, 8, 12]
        for x, y in zip(params(a, 12), params(b, 12), strict=True):
            np.testing.assert_array_equal(x, y)
        strip = lambda records: [{k: v for k, v in r.items() if k != "time"}  # noqa: E731
                                 for r in records]
        assert strip(read_metrics(workdir / name)) == strip(read_metrics(uninterrupted / name))


# -- a run's faults stay its own; what a run trained alone checks and honours ----------------

def test_a_run_whose_loss_becomes_nan_fails_alone_and_the_others_finish(data_dir,
                                                                     uninterrupted, tmp_path):
    runs = seed_runs(data_dir, tmp_path)
    runs[1][1].train.schedule.base_lr = 1e30  # seed=1 diverges
    results = train_group(prepare_group(runs))
    assert [r.error is None for r in results] == [True, False, True]
    bad = int(re.search(r"training loss became (nan|inf|-inf) at step (\d+)",
                        results[1].error).group(2))
    assert all(r["step"] < bad for r in read_metrics(tmp_path / "seed=1"))  # nothing after
    failed = Run.open(tmp_path / "seed=1")
    assert failed.steps[-1] < bad and not (tmp_path / "seed=1" / "summary.json").exists()
    assert all(np.isfinite(x).all() for x in params(failed, failed.steps[-1]))
    for name in ("seed=0", "seed=2"):  # its updates were masked: the others are unchanged
        for x, y in zip(params(Run.open(tmp_path / name), 12),
                        params(Run.open(uninterrupted / name), 12), strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_group_refuses_to_resume_with_a_changed_batch_size_before_writing(
        data_dir, uninterrupted, tmp_path):
    workdir = tmp_path / "group"
    shutil.copytree(uninterrupted, workdir)
    before = tree_snapshot(workdir)
    runs = seed_runs(data_dir, workdir)
    for _, config, _ in runs:
        config.train.batch_size //= 2
    with pytest.raises(ConfigError, match=r"cannot resume the run in .*seed=0 \(step 12\): "
                                          r"train.batch_size was \d+, now \d+"):
        train_group(prepare_group(runs))
    assert tree_snapshot(workdir) == before


def test_a_source_holding_nan_is_refused_before_any_run_of_the_group_writes(
        data_dir, finished_run, tmp_path):
    from transfusion_jax.weights import flatten, read_orbax_variables, save_npz

    flat = {k: np.array(v) for k, v in
            flatten(read_orbax_variables(finished_run / "checkpoints" / "12")).items()}
    flat["params/block2/conv/kernel"][0, 0, 0, 0] = np.nan
    save_npz(tmp_path / "w.npz", flat)
    runs = [(f"seed={s}", smoke_config(data_dir, **{
        "seed": s, "init.name": "pretrained", "init.source": str(tmp_path / "w.npz")}),
        tmp_path / f"seed={s}") for s in (0, 1)]
    runs.insert(0, ("random", smoke_config(data_dir), tmp_path / "random"))
    with pytest.raises(ConfigError, match=r"holds NaN or infinite values in 1 tensor\(s\): "
                                          r"params/block2/conv/kernel"):
        train_group(prepare_group(runs))
    assert not any((tmp_path / name).exists() for name, _, _ in runs)


def test_frozen_layers_keep_their_batchnorm_in_a_group(data_dir, tmp_path):
    """``train.freeze`` in a group: every non-head parameter and BatchNorm statistic of
    each run stays bit-equal to its step 0 (`transfusion_jax.train.freeze`), the heads
    train, and each run equals the same run trained alone."""
    from transfusion_jax.train.loop import train_and_evaluate

    overrides = {"train.freeze": "^(?!head/)", "train.steps": 8}
    runs = [(f"seed={s}", smoke_config(data_dir, seed=s, **overrides), tmp_path / f"seed={s}")
            for s in (0, 1)]
    assert all(r.error is None for r in train_group(prepare_group(runs)))
    train_and_evaluate(smoke_config(data_dir, seed=1, **overrides), tmp_path / "alone")
    for name in ("seed=0", "seed=1"):
        run = Run.open(tmp_path / name)
        start, end = run.read_variables(0), run.read_variables(8)
        for key in end["params"]:
            same = all(np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(start["params"][key]), jax.tree.leaves(end["params"][key]),
                strict=True))
            assert same == (key != "head"), key
        for a, b in zip(jax.tree.leaves(start["batch_stats"]),
                        jax.tree.leaves(end["batch_stats"]), strict=True):
            np.testing.assert_array_equal(a, b)  # statistics kept, not tracked
    for x, y in zip(params(Run.open(tmp_path / "seed=1"), 8),
                    params(Run.open(tmp_path / "alone"), 8), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
