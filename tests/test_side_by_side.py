"""Runs of a sweep trained side by side on a CPU (one thread and one CPU device each) write
what the same runs trained one after another write; CPU run slots keep every other mesh on
one device; Orbax saves from several threads at once all land."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest

from tests.conftest import ROOT, cli_env, run_cli
from transfusion_jax import parallel
from transfusion_jax.checkpoints import kept_steps, read_variables
from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.experiments.sweep import wanted_cpu_run_slots
from transfusion_jax.runs import read_metrics

SMOKE = "configs/recipe_transfusion.py:smoke"
RUNS = ("init=mean_var,seed=0", "init=pretrained,seed=0", "init=random,seed=0")


def _python(code: str, devices: int | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env=cli_env(devices), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_cpu_run_slots_keep_meshes_on_one_device_unless_a_thread_picks_one():
    out = _python("""
        import jax
        from transfusion_jax import parallel
        print(parallel.add_cpu_run_slots(2), len(jax.devices()))
        devices = jax.devices()
        print([d.id for d in parallel.data_mesh().devices.flat],
              [d.id for d in parallel.grid_mesh(4).devices.flat])
        with parallel.on_device(devices[1]):
            print([d.id for d in parallel.data_mesh().devices.flat])
        print([d.id for d in parallel.cpu_run_slots()])
    """)
    assert out.split("\n")[:4] == ["2 2", "[0] [0]", "[1]", "[0, 1]"]
    # A device count the user set is theirs: no slots, meshes span every device.
    out = _python("""
        from transfusion_jax import parallel
        print(parallel.add_cpu_run_slots(2), parallel.data_mesh().devices.size)
    """, devices=2)
    assert out.strip() == "0 2"


def test_no_slots_once_jax_has_started():
    jax.devices()  # this test process's JAX is running
    assert parallel.add_cpu_run_slots(2) == 0
    assert parallel.cpu_run_slots() == []


def test_wanted_slots_follow_the_sweep_settings():
    config = load_config(SMOKE)
    config.sweep.cpu_side_by_side = 3
    assert wanted_cpu_run_slots(config) == 3
    config.sweep.vectorize = False  # one at a time, as asked
    assert wanted_cpu_run_slots(config) == 0
    config.sweep.vectorize = "auto"
    config.sweep.cpu_side_by_side = 0  # one per core this process may use
    assert wanted_cpu_run_slots(config) >= 1
    config.sweep.cpu_side_by_side = -1
    with pytest.raises(ConfigError, match="sweep.cpu_side_by_side=-1"):
        wanted_cpu_run_slots(config)


def test_orbax_saves_from_threads_side_by_side_all_land(tmp_path):
    """Orbax names an asynchronous save's signals by one process-wide counter; two
    managers saving at once from two threads used to time out after five minutes."""
    _python(f"""
        import threading
        import numpy as np
        from transfusion_jax import parallel
        from transfusion_jax.checkpoints import Checkpointer
        assert parallel.add_cpu_run_slots(2) == 2

        def run(i):
            ckpt = Checkpointer("{tmp_path}/run%d" % i, keep_last=20)
            for step in range(8):
                ckpt.save(step, {{"w": np.full((64, 64), step + 10 * i, np.float32)}},
                          {{"i": i}}, {{"step": step}})
            ckpt.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    """)
    for i in range(2):
        assert kept_steps(tmp_path / f"run{i}") == list(range(8))


def test_threads_opening_one_shipped_dataset_on_an_empty_folder_all_succeed(tmp_path):
    """Runs side by side on a fresh data folder prepare the dataset at the same moment; tfds
    renames its temporary folder into place, so a second preparation used to fail."""
    from tests.test_pipeline import digits
    from transfusion_jax.data import open_source

    config = digits(str(tmp_path))
    barrier = threading.Barrier(3)

    def open_it():
        barrier.wait()
        return len(open_source(config, "train")[0])

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        sizes = list(pool.map(lambda _: open_it(), range(3)))
    assert sizes == [1437] * 3


@pytest.fixture(scope="module")
def two_sweeps(data_dir, tmp_path_factory):
    """The smoke study (one seed, random init made to diverge) side by side and one run
    after another."""
    common = ("--config.sweep.seeds=(0,)", "--config.sweep.similarity=False",
              '--config.sweep.axes.init.random={"init": {"name": "random"}, '
              '"train": {"schedule": {"base_lr": 1e12}}}')
    side, alone = tmp_path_factory.mktemp("side"), tmp_path_factory.mktemp("alone")
    procs = [run_cli(side, data_dir, *common, "--config.sweep.cpu_side_by_side=2",
                     devices=None, config=SMOKE),
             run_cli(alone, data_dir, *common, "--config.sweep.vectorize=False",
                     devices=None, config=SMOKE)]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return side, alone, procs[0].stderr


def test_runs_side_by_side_write_what_runs_one_after_another_write(two_sweeps):
    side, alone, log = two_sweeps
    assert "3 runs, 2 side by side" in log
    for name in RUNS:  # each run's own lines carry its name
        assert f"[{name}] " in log
    statuses = [{name: json.loads((root / "runs" / name / "sweep_run.json").read_text())
                 ["status"] for name in RUNS} for root in (side, alone)]
    assert statuses[0] == statuses[1] == {RUNS[0]: "finished", RUNS[1]: "finished",
                                          RUNS[2]: "failed"}
    for name in RUNS:
        records = [[{k: v for k, v in r.items() if k != "time"}
                    for r in read_metrics(root / "runs" / name)] for root in (side, alone)]
        assert records[0] == records[1], name
        assert records[0] or name == RUNS[2]  # the diverged run stopped before its first log
    for name in RUNS[:2]:
        steps = [kept_steps(root / "runs" / name / "checkpoints") for root in (side, alone)]
        assert steps[0] == steps[1] == [0, 12]
        final = [read_variables(root / "runs" / name / "checkpoints" / "12")
                 for root in (side, alone)]
        flat = [jax.tree.leaves(f) for f in final]
        assert len(flat[0]) == len(flat[1]) > 0
        for a, b in zip(*flat, strict=True):
            np.testing.assert_array_equal(a, b)
    assert (side / "report.html").exists()
