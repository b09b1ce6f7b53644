"""A training run on disk, opened for reading: the one owner of a run's files.

``run = Run.open(WORKDIR)`` gives the run's config (from its newest checkpoint's metadata),
its model (rebuilt from the config, the head sized from the checkpoint), its kept checkpoint
steps, ``run.read_variables(step)`` (params and BatchNorm statistics only, as NumPy arrays;
the optimizer state is never read), the logged metrics as arrays and the summary. Analyses
read runs through this module and never build a trainer; only training builds one.

A checkpoint is named ``RUN_DIR`` (its newest step) or ``RUN_DIR@STEP`` (`parse_ref`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils import epath

from transfusion_jax import checkpoints
from transfusion_jax.config import ConfigError
from transfusion_jax.models import model_from_config
from transfusion_jax.paths import to_path

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """Every line of ``workdir/metrics.jsonl``, in order (``[]`` when there is none)."""
    path = to_path(workdir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def metrics_as_arrays(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """``metrics.jsonl`` lines as ``{split: {"step": (T,), name: (T,)}}`` float arrays.

    A split is ``train``, ``convergence`` or an evaluator's name (``eval``,
    ``similarity_to_init``, ...); a value a line lacks (or logged as null) is NaN.
    """
    by_split: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    out = {}
    for split, rows in by_split.items():
        names = list(dict.fromkeys(k for r in rows for k in r if k not in ("split", "time")))
        out[split] = {n: np.array([np.nan if r.get(n) is None else r[n] for r in rows],
                                  dtype=np.float64) for n in names}
    return out


def parse_ref(spec: str | Path) -> tuple[epath.Path, int | None]:
    """``"RUN_DIR[@STEP]"`` -> ``(run_dir, step or None for the newest)``.

    Raises:
      ConfigError: the part after ``@`` is not a step number.
    """
    spec = str(spec)
    path, _, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if step and not step.isdigit():
        raise ConfigError(f"{spec!r}: the part after @ must be a checkpoint step")
    return to_path(path), (int(step) if step else None)


@dataclasses.dataclass
class Run:
    """A run's workdir, opened read-only.

    Attributes:
      workdir: the run's folder (absolute, or ``gs://``).
      config: the config it was trained with (from its newest checkpoint's metadata).
      steps: its kept checkpoint steps, ascending.
    """

    workdir: epath.Path
    config: ml_collections.ConfigDict
    steps: list[int]

    @classmethod
    def open(cls, workdir: str | Path) -> Run:
        """Opens ``workdir``.

        Raises:
          ConfigError: it is not a training run's workdir, or holds no finished checkpoint.
        """
        workdir = to_path(workdir)
        directory = workdir / CHECKPOINTS
        if not directory.is_dir():
            raise ConfigError(f"{workdir} is not a training run's workdir (no {CHECKPOINTS}/ "
                              "in it)")
        steps = checkpoints.kept_steps(directory)
        if not steps:
            raise ConfigError(f"{directory} holds no finished checkpoint")
        meta = checkpoints.read_meta(directory, steps[-1])
        return cls(workdir, ml_collections.ConfigDict(meta["config"]), steps)

    @property
    def latest_step(self) -> int:
        return self.steps[-1]

    @property
    def finished(self) -> bool:
        """Whether the run trained all its steps and wrote its summary."""
        return self.latest_step >= self.config.train.steps and (self.workdir / SUMMARY).exists()

    def step_dir(self, step: int) -> epath.Path:
        """``WORKDIR/checkpoints/<step>``; raises `ConfigError` for a step not kept."""
        if step not in self.steps:
            raise ConfigError(f"step {step} is not a checkpoint of {self.workdir}; it has "
                              f"{self.steps}")
        return self.workdir / CHECKPOINTS / str(step)

    @functools.cached_property
    def num_classes(self) -> int:
        """Width of the classifier head, read from the newest checkpoint's metadata."""
        shapes = checkpoints.state_shapes(self.step_dir(self.latest_step))
        return int(shapes["params"]["head"]["kernel"][-1])

    @functools.cached_property
    def model(self) -> nn.Module:
        """The run's model, rebuilt from its config."""
        return model_from_config(self.config.model, self.num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(1, size, size, channels)`` of the run's inputs."""
        d = self.config.data
        return (1, d.image_size, d.image_size, d.channels)

    def block_names(self) -> list[str]:
        return list(self.model.block_names())

    def read_variables(self, step: int | None = None) -> dict[str, Any]:
        """``{"params", "batch_stats"}`` of ``step`` (default: the newest), NumPy arrays."""
        return checkpoints.read_variables(self.step_dir(self.latest_step if step is None
                                                        else step))

    def stack_variables(self, steps: Sequence[int] = ()) -> dict[str, Any]:
        """Variables of ``steps`` (default: every kept step) stacked on a leading ``(C,)``
        axis, in the order given, ready for `jax.vmap`."""
        return stack([self.read_variables(s) for s in (steps or self.steps)])

    @property
    def metrics(self) -> dict[str, dict[str, np.ndarray]]:
        """Logged metrics as arrays, ``{split: {"step": (T,), name: (T,)}}``
        (`metrics_as_arrays`): ``run.metrics["eval"]["accuracy"]``."""
        return metrics_as_arrays(read_metrics(self.workdir))

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json`` (``{}`` before the run finished)."""
        path = self.workdir / SUMMARY
        return json.loads(path.read_text()) if path.exists() else {}

    def __repr__(self) -> str:
        return (f"Run({str(self.workdir)!r}, model={self.config.model.name!r}, "
                f"init={self.config.init.name!r}, steps={self.steps})")


def stack(trees: Sequence[Any]) -> Any:
    """Pytrees of equal structure stacked leaf by leaf on a new leading axis (NumPy)."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
