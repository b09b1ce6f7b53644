"""Builds what a run needs from its config: validated names, data, model, optimizer, state."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from transfusion_jax.config import ConfigError, check_choice, check_positive
from transfusion_jax.data import NORMALIZATIONS, DataError, DatasetMeta, open_source
from transfusion_jax.init import (
    INITIALIZERS,
    NEEDS_SOURCE,
    initialize_sequence,
    parse_init_config,
)
from transfusion_jax.models import DTYPES, MODELS, model_from_config
from transfusion_jax.models.conv import CONV_IMPLS
from transfusion_jax.train.component_options import check_options
from transfusion_jax.train.evaluators import validate_evals
from transfusion_jax.train.losses import LOSSES, resolve_loss
from transfusion_jax.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer
from transfusion_jax.train.sources import check_finite
from transfusion_jax.train.state import TrainState, create_state


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks every name and number the trainer reads; raises `ConfigError` naming the fix."""
    check_choice("model.name", config.model.name, MODELS)
    check_choice("model.dtype", config.model.dtype, DTYPES)
    check_choice("model.conv_impl", config.model.conv_impl, CONV_IMPLS)
    for name, _ in parse_init_config(config.init.name, dict(config.init.options)):
        check_choice("init.name", name, INITIALIZERS)
    check_choice("train.optimizer.name", config.train.optimizer.name, OPTIMIZERS)
    check_choice("train.schedule.name", config.train.schedule.name, SCHEDULES)
    check_choice("train.loss", config.train.loss, (*LOSSES, "auto"))
    check_choice("data.normalize", config.data.normalize, NORMALIZATIONS)
    check_choice("convergence.mode", config.convergence.mode, ("max", "min"))
    check_choice("data.channels", str(config.data.channels), ("1", "3"))
    check_options(config)
    for key in ("train.steps", "train.batch_size", "eval.every_steps", "eval.batch_size",
                "checkpoint.every_steps", "log.every_steps", "data.image_size",
                "checkpoint.keep_last", "data.num_threads"):
        section, name = key.split(".")
        check_positive(key, config[section][name])
    check_positive("train.schedule.base_lr", config.train.schedule.base_lr)
    validate_evals(config, num_devices)
    for key, size in (("train.batch_size", config.train.batch_size),
                      ("eval.batch_size", config.eval.batch_size)):
        if size % num_devices or size % jax.process_count():
            raise ConfigError(
                f"{key}={size} must be a multiple of the {num_devices} devices (and "
                f"{jax.process_count()} processes) it is split over")


@dataclasses.dataclass
class RunSetup:
    """Everything built from a config before the first step."""

    model: nn.Module
    meta: DatasetMeta
    train_source: Any
    eval_source: Any
    tx: optax.GradientTransformation
    loss_name: str
    input_shape: tuple[int, int, int, int]


def build_run(config: ml_collections.ConfigDict) -> RunSetup:
    """Opens the data and builds the model and optimizer of ``config``."""
    train_source, meta = open_source(config.data, config.data.train_split)
    eval_source, _ = open_source(config.data, config.data.eval_split)
    if config.data.train_examples > len(train_source):
        raise DataError(f"data.train_examples={config.data.train_examples} but split "
                        f"{config.data.train_split!r} of {meta.name!r} has only "
                        f"{len(train_source)} examples")
    loss_name = resolve_loss(config.train.loss, meta.multi_label)
    if loss_name == "softmax" and meta.multi_label:
        raise ConfigError(f"train.loss='softmax' but dataset {meta.name!r} is multi-label; "
                          "use 'sigmoid' or 'auto'")
    model = model_from_config(config.model, meta.num_classes)
    size, channels = config.data.image_size, config.data.channels
    return RunSetup(model=model, meta=meta, train_source=train_source,
                    eval_source=eval_source, tx=make_optimizer(config.train),
                    loss_name=loss_name, input_shape=(1, size, size, channels))


def _rngs(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(model_init, strategy, train)`` keys, raw ``uint32 (2,)`` for checkpointing."""
    model_rng, init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    return model_rng, init_rng, train_rng


def load_source(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The pretrained variables named by ``init.source``, in this project's Flax layout,
    checked when read (see `transfusion_jax.train.sources`)."""
    from transfusion_jax.train.sources import read_source

    return read_source(config)


def initial_state(config: ml_collections.ConfigDict, setup: RunSetup) -> TrainState:
    """The step-0 state: model template -> initializer strategies -> optimizer state."""
    model_rng, init_rng, train_rng = _rngs(config.seed)
    template = setup.model.init(model_rng, jnp.zeros(setup.input_shape), train=False)
    steps = parse_init_config(config.init.name, dict(config.init.options))
    needs_source = any(name in NEEDS_SOURCE for name, _ in steps)
    source = load_source(config) if needs_source else None
    variables = initialize_sequence(steps, init_rng, dict(template), source=source,
                                    blocks=setup.model.block_names())
    check_finite(variables, f"the {config.init.name!r} initialisation")
    return create_state(variables, setup.tx, train_rng)


def abstract_state(config: ml_collections.ConfigDict, setup: RunSetup) -> TrainState:
    """Shapes and dtypes of `initial_state`, computed without running anything."""
    _, _, train_rng = _rngs(config.seed)
    template = jax.eval_shape(
        lambda: setup.model.init(jax.random.PRNGKey(0), jnp.zeros(setup.input_shape),
                                 train=False))
    return jax.eval_shape(lambda v: create_state(v, setup.tx, train_rng), dict(template))
