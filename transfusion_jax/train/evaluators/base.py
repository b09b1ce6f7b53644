"""The evaluator contract and what the loop hands every evaluator.

An evaluator type is one module with

- ``OPTIONS``: its options and their defaults (``every_steps`` is common to all);
- ``build(name, options, context) -> Evaluator``: called once before training; it builds
  (or takes from a cache) its jitted step and computes what it keeps fixed, e.g. the
  step-0 representations it compares against;
- the evaluator's ``run(state, step) -> {metric: float}``: one evaluation of the train
  state, the keys ``<metric>`` or ``<metric>/<block>`` (the loop logs them under the
  evaluator's name: ``<name>/<metric>/<block>``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import flax.linen as nn
import ml_collections
from jax.sharding import Mesh

from transfusion_jax.data import DatasetMeta


@dataclasses.dataclass
class EvalContext:
    """What an evaluator may read, built once by the loop.

    Attributes:
      model: the run's model.
      mesh: the data mesh (`transfusion_jax.parallel`).
      data: the run's ``config.data`` section.
      meta: the training data's `DatasetMeta` (classes, multi-label).
      loss_name: the training loss (``softmax`` / ``sigmoid``).
      blocks: the model's blocks in forward order (``model.block_names()``).
      initial_variables: the step-0 model variables ``{"params", "batch_stats"}`` (host
        arrays): the run's initialisation, read from checkpoint 0 on resume.
    """

    model: nn.Module
    mesh: Mesh
    data: ml_collections.ConfigDict
    meta: DatasetMeta
    loss_name: str
    blocks: Sequence[str]
    initial_variables: dict[str, Any]


class Evaluator(Protocol):
    """One named evaluation, run every ``every_steps`` steps and at the last step."""

    name: str
    every_steps: int

    def run(self, state: Any, step: int) -> dict[str, float]:
        """Evaluates ``state`` (a `TrainState`) at ``step``; returns scalars by key."""
        ...
