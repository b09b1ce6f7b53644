"""A sweep's grid: the runs a ``job = sweep`` config expands into.

A sweep config is an ordinary training config plus a ``sweep`` section (see
`transfusion_jax.config.base_config`). Each entry of ``sweep.axes`` is an axis, a dict
``{label: partial config tree}``; the grid is the product of the axes and ``sweep.seeds``.
Each run is the base config with its variants' partial trees merged in and its seed set, e.g.

    c.sweep.axes.init = {
        "random": {"init": {"name": "random"}},
        "transfusion_k2": {"init": {"name": "transfusion", "options": {"k": 2},
                                    "source": "@source"}},
    }

A string value ``"@NAME"`` (in any run or stage config) is replaced by the workdir of the
sweep's stage ``NAME`` (``sweep.stages``: runs trained first, e.g. the source model of a
transfer study, or the intermediate model of a double fine-tuning). A stage whose config
leaves ``data.data_dir`` empty reads its data from the sweep's ``data.data_dir``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import ml_collections

from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.paths import to_path

STAGES_DIR = "stages"
RUNS_DIR = "runs"
STATUS_FILE = "sweep_run.json"  # in each run's folder: name, axes, seed, status, config


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One training run of a sweep.

    Attributes:
      name: ``"axis=label,...,seed=S"``, also its folder name under ``runs/``.
      axes: ``{axis: label}``.
      seed: the run's seed.
      config: its full training config (``job = "train"``).
    """

    name: str
    axes: dict[str, str]
    seed: int
    config: ml_collections.ConfigDict


def init_variants(names: list[str], *, source: str = "@source",
                  dont_load: tuple[str, ...] = ("^head/",)) -> dict[str, dict[str, Any]]:
    """The ``init`` axis for common Transfusion initialisations.

    Args:
      names: e.g. ``["random", "pretrained", "mean_var", "transfusion:3", "gabor",
        "shuffled"]``; ``transfusion:K`` is the first K blocks pretrained.
      source: the pretrained weights (a path, ``package:...`` or ``@stage``).
      dont_load: regexes kept random by pretrained-style inits (default: the new head).

    Returns:
      ``{label: {"init": {...}}}`` for ``sweep.axes.init``.
    """
    variants = {}
    for spec in names:
        name, _, arg = spec.partition(":")
        init: dict[str, Any] = {"name": name, "options": {"scheme": "he_normal"}}
        if name in ("pretrained", "mean_var", "shuffled"):
            init["options"]["dont_load"] = tuple(dont_load)
        if name == "transfusion":
            init["options"]["k"] = int(arg or 0)
        if name not in ("random", "gabor"):
            init["source"] = source
        label = f"transfusion_k{int(arg or 0)}" if name == "transfusion" else name
        variants[label] = {"init": init}
    return variants


def merge_tree(config: ml_collections.ConfigDict, tree: Any, where: str) -> None:
    """Sets every leaf of the partial config ``tree`` in ``config`` (in place).

    Raises:
      ConfigError: a key that ``config`` does not have (outside its open sections), named
        with ``where`` (e.g. ``sweep.axes.init.mean_var``).
    """
    for key, value in tree.items():
        path = f"{where}.{key}"
        sub = config.get(key) if isinstance(config, ml_collections.ConfigDict) else None
        is_tree = isinstance(value, dict | ml_collections.ConfigDict)
        if is_tree and isinstance(sub, ml_collections.ConfigDict):
            merge_tree(sub, value, path)
            continue
        value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        try:
            config[key] = value
        except (AttributeError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: cannot set {key!r} ({e}); the keys are those of "
                              "transfusion_jax.config.base_config()") from e


def resolve_stage_refs(config: ml_collections.ConfigDict, stage_dirs: dict[str, Path],
                       where: str) -> None:
    """Replaces every ``"@NAME"`` string value by the workdir of stage ``NAME`` (in place)."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            resolve_stage_refs(value, stage_dirs, f"{where}.{key}")
        elif isinstance(value, str) and value.startswith("@"):
            name = value[1:]
            if name not in stage_dirs:
                raise ConfigError(f"{where}.{key}={value!r} names no earlier stage; stages: "
                                  f"{sorted(stage_dirs) or 'none (set sweep.stages)'}")
            config[key] = str(stage_dirs[name])


def stage_configs(config: ml_collections.ConfigDict,
                  sweep_dir: Path) -> list[tuple[str, ml_collections.ConfigDict, Path]]:
    """``[(name, train config, workdir)]`` of ``sweep.stages``, references resolved."""
    out, dirs = [], {}
    for entry in config.sweep.stages:
        if not (isinstance(entry, tuple | list) and len(entry) == 2):
            raise ConfigError(f"sweep.stages entries are (name, 'config.py:arg') pairs, got "
                              f"{entry!r}")
        name, spec = entry
        stage = load_config(spec)
        stage.job = "train"
        if not stage.data.data_dir:  # where the data lives is the sweep's, unless set
            stage.data.data_dir = config.data.data_dir
        resolve_stage_refs(stage, dirs, f"stage {name}")
        dirs[name] = sweep_dir / STAGES_DIR / name
        out.append((name, stage, dirs[name]))
    return out


def expand_grid(config: ml_collections.ConfigDict, sweep_dir: Path) -> list[GridRun]:
    """Every run of the sweep, seed-major (all variants of seed 0 first).

    Raises:
      ConfigError: no axes and one seed (nothing to sweep), an empty axis, a variant that
        sets an unknown key, or an ``@NAME`` that is not a stage.
    """
    axes = config.sweep.axes
    seeds = [int(s) for s in config.sweep.seeds]
    if not seeds:
        raise ConfigError("sweep.seeds is empty; give at least one seed, e.g. (0, 1, 2)")
    for axis, variants in axes.items():
        if not isinstance(variants, ml_collections.ConfigDict) or not variants:
            raise ConfigError(f"sweep.axes.{axis} must be a non-empty {{label: partial "
                              "config}} dict")
    stage_dirs = {name: d for name, _, d in stage_configs(config, sweep_dir)}
    base = copy.deepcopy(config)
    base.job = "train"
    names = sorted(axes.keys())
    runs = []
    for seed in seeds:
        for labels in itertools.product(*(sorted(axes[a].keys()) for a in names)):
            run = copy.deepcopy(base)
            for axis, label in zip(names, labels, strict=True):
                merge_tree(run, axes[axis][label], f"sweep.axes.{axis}.{label}")
            run.seed = seed
            resolve_stage_refs(run, stage_dirs, "run")
            chosen = dict(zip(names, labels, strict=True))
            name = ",".join([*(f"{a}={lab}" for a, lab in chosen.items()), f"seed={seed}"])
            runs.append(GridRun(name, chosen, seed, run))
    return runs


def require_sweep_dir(sweep_dir: str | Path) -> None:
    """Raises `ConfigError` unless ``sweep_dir`` holds a sweep's runs (``runs/*/`` with a
    ``sweep_run.json``): what ``job = aggregate`` reads."""
    sweep_dir = to_path(sweep_dir)
    if any((sweep_dir / RUNS_DIR).glob(f"*/{STATUS_FILE}")):
        return
    if (sweep_dir / "checkpoints").is_dir():
        raise ConfigError(f"job=aggregate needs a sweep's workdir; {sweep_dir} is a single "
                          "training run (its summary is summary.md). Aggregate the workdir of "
                          "a job=sweep config, whose runs are in runs/*/")
    raise ConfigError(f"job=aggregate needs a sweep's workdir (runs/*/{STATUS_FILE}); "
                      f"{sweep_dir} holds none: run the sweep first (job=sweep) or give its "
                      "--workdir")


def run_dir(sweep_dir: Path, run: GridRun) -> Path:
    """The workdir of one run of the sweep."""
    return to_path(sweep_dir) / RUNS_DIR / run.name


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a run (``{}`` when it is not there yet)."""
    path = to_path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def read_status(path: Path) -> dict[str, Any]:
    """A run's ``sweep_run.json`` (``{}`` when it was never started)."""
    return read_json(to_path(path) / STATUS_FILE)


def group_label(axes: dict[str, str]) -> str:
    """A run's variant without its seed: ``"mean_var"`` for one axis,
    ``"init=mean_var,model=cbr_small"`` for several, ``"all runs"`` for none."""
    if not axes:
        return "all runs"  # a sweep over seeds only
    if len(axes) == 1:
        return str(next(iter(axes.values())))
    return ",".join(f"{a}={axes[a]}" for a in sorted(axes))
