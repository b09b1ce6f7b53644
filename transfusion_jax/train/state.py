"""The train state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimizer state, step and PRNG key.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the model's ``params`` collection.
      batch_stats: the model's ``batch_stats`` collection (may be empty).
      opt_state: the optax state.
      rng: a raw ``uint32 (2,)`` PRNG key; step ``s`` uses ``fold_in(rng, s)``.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict[str, Any]:
        """The model variables ``{"params", "batch_stats"}``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_state(variables: dict[str, Any], tx: optax.GradientTransformation,
                 rng: jax.Array) -> TrainState:
    """A step-0 state from initialised model variables."""
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=rng)
