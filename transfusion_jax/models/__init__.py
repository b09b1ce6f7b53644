"""Model zoo. Every model is reached through the explicit dict `MODELS`.

Contract (every family follows it):
- a `flax.linen.Module` built by ``MODELS[name](num_classes, **options)``;
- ``__call__(x, *, train=False) -> (logits, out)`` with ``x`` of shape ``(n, h, w, c)``,
  ``logits`` float32 ``(n, num_classes)`` and ``out`` a dict of named intermediates
  (``stem``/``block1``/... , ``pre_logits``, ``logits``);
- every layer has an explicit ``name=``; the top-level parameter groups are the model's
  blocks in forward order, listed by ``module.block_names()``;
- BatchNorm uses ``use_running_average=not train`` and keeps statistics in ``batch_stats``;
- convolutions are `transfusion_jax.models.conv.Conv` layers computed as the constructor's
  ``conv_impl`` says (``auto``, ``xla``, ``im2col``), with `flax.linen.Conv`'s parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transfusion_jax.config import ConfigError, check_choice
from transfusion_jax.models.cbr import make_cbr
from transfusion_jax.models.conv import CONV_IMPLS
from transfusion_jax.models.efficientnet_lite import make_efficientnet_lite
from transfusion_jax.models.googlenet import make_googlenet
from transfusion_jax.models.inception_v3 import make_inception_v3
from transfusion_jax.models.resnet import make_resnet
from transfusion_jax.models.slim_resnet import make_slim_resnet

MODELS: dict[str, Callable[..., nn.Module]] = {
    # The small CBR family of the Transfusion paper.
    "cbr_large_tall": make_cbr("cbr_large_tall"),
    "cbr_large_wide": make_cbr("cbr_large_wide"),
    "cbr_small": make_cbr("cbr_small"),
    "cbr_tiny": make_cbr("cbr_tiny"),
    # ImageNet architectures (torchvision-compatible; weights via transfusion_jax.weights).
    "resnet18": make_resnet(18),
    "resnet34": make_resnet(34),
    "resnet50": make_resnet(50),
    "slim_resnet18": make_slim_resnet(18),
    "slim_resnet50": make_slim_resnet(50),
    "inception_v3": make_inception_v3,
    "googlenet": make_googlenet,
    "efficientnet_lite0": make_efficientnet_lite("efficientnet_lite0"),
    "efficientnet_lite2": make_efficientnet_lite("efficientnet_lite2"),
}


# model.dtype -> the compute dtype (parameters stay float32).
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(name: str, num_classes: int, *, conv_impl: str = "auto",
                **options: Any) -> nn.Module:
    """Builds ``MODELS[name]`` with its convolutions in form ``conv_impl`` (`CONV_IMPLS`).

    Raises:
      ConfigError: a bad name, option or ``conv_impl``, naming the fix.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    check_choice("model.conv_impl", conv_impl, CONV_IMPLS)
    try:
        return MODELS[name](num_classes, conv_impl=conv_impl, **options)
    except TypeError as e:
        raise ConfigError(f"bad options for model {name!r} (model.options): {e}") from e


def model_from_config(model_config: Any, num_classes: int) -> nn.Module:
    """The model a config's ``model`` section describes (name, dtype, conv_impl, options).

    Args:
      model_config: ``config.model`` (``name``, ``dtype``, ``conv_impl``, ``options``).
      num_classes: width of the classifier head.

    Raises:
      ConfigError: an unknown name, dtype or option.
    """
    if model_config.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={model_config.dtype!r} is not valid; choose one of: "
                          f"{', '.join(DTYPES)}")
    # Runs saved before model.conv_impl existed computed with XLA's form; the function is
    # the same in every form, so they take today's default.
    return build_model(model_config.name, num_classes, dtype=DTYPES[model_config.dtype],
                       conv_impl=model_config.get("conv_impl", "auto"),
                       **dict(model_config.options))


def representation_names(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """The named intermediates a model returns in ``out`` (except ``logits``), in forward
    order: its blocks first, then ``pre_logits``, then any others by name. Computed from
    shapes alone (nothing is run)."""
    def forward(x):
        variables = model.init(jax.random.PRNGKey(0), x)
        return model.apply(variables, x)[1]

    names = set(jax.eval_shape(forward, jnp.zeros(input_shape)))
    order = [b for b in model.block_names() if b in names] + ["pre_logits"]
    return order + sorted(names - set(order) - {"logits"})
