"""The Python API: the command line's jobs as functions, for notebooks and scripts.

::

    import transfusion_jax as tfj

    run = tfj.train("configs/quickstart.py", "runs/single", {"train.steps": 300})
    run.metrics["eval"]["accuracy"]                 # (T,) array, steps in ["eval"]["step"]
    run.metrics["similarity_to_init"]["linear_cka/block4"]
    variables = run.read_variables(0)               # the initialisation, NumPy arrays
    study = tfj.sweep("configs/recipe_transfusion.py:quick", "runs/quickstart")
    study.runs["init=pretrained,seed=0"].summary["convergence"]
    report = tfj.analyze(after="runs/single", workdir="runs/single_analysis")
    sims = tfj.similarity_job(run_dir="runs/single")  # every checkpoint x layer

(``transfusion_jax.train`` is also the training subpackage: calling it calls `train`.) Each
function runs exactly what ``python -m transfusion_jax.main`` runs for that job, with
the same progress lines (logged to stderr) and the same files; a config is a
``configs/NAME.py[:ARG]`` spec or a `ml_collections.ConfigDict` built on
`transfusion_jax.config.base_config`, and ``overrides`` set dotted keys as ``--config.KEY``
flags do. Bad input raises the same exceptions whose messages the command line prints
(`ConfigError`, `DataError`, ...).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections

from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.paths import to_path

if TYPE_CHECKING:  # runs imports JAX, Flax and Orbax: not needed to start the command line
    from transfusion_jax.runs import Run

ConfigLike = str | ml_collections.ConfigDict


def setup_logging() -> None:
    """Project messages at INFO on stderr; library chatter (Orbax, absl) at WARNING, and
    none about a failure the project already reported in one line (`cli_errors`)."""
    from absl import flags
    from absl import logging as absl_logging

    from transfusion_jax.cli_errors import quiet_reported_library_errors

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # absl's own flags keep their defaults
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.WARNING)
    project = logging.getLogger("transfusion_jax")
    if not project.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        project.addHandler(handler)
    project.setLevel(logging.INFO)
    project.propagate = False
    quiet_reported_library_errors()


def setup_jax(cpu_run_slots: int = 0) -> None:
    """The persistent compilation cache (``TFJ_COMPILATION_CACHE``, default
    ``~/.cache/tfj_jax``; empty = none), `jax.distributed` for multi-process runs, then the
    job's first log line: the backend and the devices (`accelerator.describe_devices`).

    ``cpu_run_slots``: on a CPU, that many runs may train side by side, one per CPU device
    (`parallel.add_cpu_run_slots`; a sweep's ``sweep.vectorize=auto``).

    Raises:
      AcceleratorError: ``TFJ_EXPECT_ACCELERATOR=1`` and JAX found only the CPU (also when
        that made ``TFJ_DISTRIBUTED=auto`` find no cluster).
    """
    import jax

    from transfusion_jax import accelerator, parallel

    cache = os.environ.get("TFJ_COMPILATION_CACHE", os.path.expanduser("~/.cache/tfj_jax"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    try:
        parallel.initialize_distributed()
        parallel.add_cpu_run_slots(cpu_run_slots)
    except Exception:
        accelerator.require_accelerator()  # a CPU-only JAX sees no TPU slice: say that
        raise
    accelerator.require_accelerator()
    logging.getLogger(__name__).info(accelerator.describe_devices())


def make_config(config: ConfigLike, overrides: dict[str, Any] | None = None,
                **sections: Any) -> ml_collections.ConfigDict:
    """A config from a spec or a ConfigDict (copied), with dotted-key ``overrides``.

    Raises:
      ConfigError: an unknown key (the base config is locked) or a file that does not load.
    """
    config = load_config(config) if isinstance(config, str) else ml_collections.ConfigDict(
        config)
    for key, value in {**(overrides or {}), **sections}.items():
        *parents, leaf = key.split(".")
        node = config
        try:
            for part in parents:
                node = node[part]
            node[leaf] = value
        except (AttributeError, KeyError) as e:
            raise ConfigError(f"unknown config key {key!r}; the valid keys are those of "
                              "transfusion_jax.config.base_config()") from e
        except TypeError as e:
            raise ConfigError(f"{key}={value!r}: {e}") from e
    return config


def _start(workdir: str | Path | None, job: str) -> Path:
    setup_logging()
    setup_jax()
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix=f"transfusion_jax_{job}_")
        logging.getLogger(__name__).info("%s: workdir %s", job, workdir)
    return to_path(workdir)


def train(config: ConfigLike, workdir: str | Path | None = None,
          overrides: dict[str, Any] | None = None) -> Run:
    """Trains (or resumes) one run, as ``job=train`` does; returns the finished `Run`.

    Args:
      config: ``"configs/NAME.py[:ARG]"`` or a ConfigDict.
      workdir: where the run's files go (default: a new temporary folder).
      overrides: ``{"train.steps": 300, ...}``.

    Returns:
      the run, opened: ``.metrics`` (arrays), ``.summary``, ``.read_variables(step)``,
      ``.model``, ``.config``, ``.workdir``.
    """
    from transfusion_jax.runs import Run
    from transfusion_jax.train.loop import train_and_evaluate

    config = make_config(config, overrides)
    workdir = _start(workdir, "train")
    train_and_evaluate(config, workdir)
    return Run.open(workdir)


@dataclasses.dataclass
class Study:
    """A sweep folder after `sweep`: ``runs`` are the finished runs by name, ``statuses``
    every run's status, ``report`` the report's files (None until every run is done)."""

    workdir: Path
    runs: dict[str, Run]
    statuses: dict[str, str]
    report: dict[str, str] | None


def sweep(config: ConfigLike, workdir: str | Path | None = None,
          overrides: dict[str, Any] | None = None) -> Study:
    """Trains every run of a sweep config (skipping finished ones) and writes its report."""
    from transfusion_jax.experiments.grid import expand_grid, read_status, run_dir
    from transfusion_jax.experiments.sweep import run_sweep
    from transfusion_jax.runs import Run

    config = make_config(config, overrides, job="sweep")
    workdir = _start(workdir, "sweep")
    result = run_sweep(config, workdir)
    runs = {}
    for r in expand_grid(config, workdir):
        if read_status(run_dir(workdir, r)).get("status") == "finished":
            runs[r.name] = Run.open(run_dir(workdir, r))
    return Study(workdir, runs, result["runs"], result["report"])


def analyze(config: ConfigLike = "configs/analyze.py", workdir: str | Path | None = None,
            overrides: dict[str, Any] | None = None, *, after: str = "",
            before: str = "") -> dict[str, Any]:
    """The analyze job: what training changed between ``before`` and ``after``
    (``RUN_DIR[@STEP]``; ``before`` defaults to the after run's step 0). Returns the
    report's files, timings and the feature-space result."""
    from transfusion_jax.analysis.analyze import run_analysis

    sections = {k: v for k, v in (("analysis.after", after), ("analysis.before", before)) if v}
    config = make_config(config, overrides, job="analyze", **sections)
    return run_analysis(config, _start(workdir, "analyze"))


def similarity_job(config: ConfigLike = "configs/similarity_sweep.py",
               workdir: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
               run_dir: str = "") -> dict[str, Any]:
    """The similarity job: every kept checkpoint x layer of the run in ``run_dir``. Returns
    ``{"steps", "layers", "linear_cka": (C, L, C, L), "svcca", "files"}``."""
    from transfusion_jax.analysis.similarity_job import run_similarity_job

    sections = {"similarity.run_dir": run_dir} if run_dir else {}
    config = make_config(config, overrides, job="similarity", **sections)
    return run_similarity_job(config, _start(workdir, "similarity"))
