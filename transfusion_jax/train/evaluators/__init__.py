"""Evaluators the training loop runs, big_vision style: named, typed, each on its schedule.

``config.eval`` configures the run's main evaluator, ``eval`` (type ``classification`` on
``data.eval_split``; its metrics drive the convergence record). ``config.evals`` adds named
evaluators, each ``{"type": ..., "every_steps": ..., <options>}``::

    c.evals.similarity_to_init = {"type": "similarity_to_init", "every_steps": 25,
                                  "examples": 512}
    c.evals.weight_change = {"type": "weight_change", "every_steps": 25}

An entry made with `evaluator` holds every option of its type, so each one can then be set
on the command line (``--config.evals.similarity_to_init.svcca=True``); a flag cannot add
a key the config file did not write.

Types (`EVALUATORS`, each a module with its ``OPTIONS`` and ``build``):

- ``classification``: loss, accuracy, ROC-AUC, mAP over a split;
- ``similarity_to_init``: per block, linear CKA (optionally SVCCA) of the representation
  with the run's own step-0 representation, on a fixed subset;
- ``weight_change``: per block, relative Frobenius change of the kernels since step 0 and
  per-filter correlation summaries.

An evaluator runs every ``every_steps`` steps and at the last step; its values go to
``metrics.jsonl`` (``split`` = the evaluator's name, keys ``<metric>/<block>``, i.e.
``<name>/<metric>/<block>`` in full), TensorBoard, the run's ``curves.png`` and summary.
Each type also evaluates a group of runs trained together in one compiled pass
(``build_group``, `build_group_evaluators`), each run getting the values it would log alone.
"""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any

import ml_collections

from transfusion_jax.config import ConfigError, check_choice, check_positive
from transfusion_jax.train.evaluators import classification, similarity_to_init, weight_change
from transfusion_jax.train.evaluators.base import EvalContext, Evaluator, GroupEvaluator

EVALUATORS: dict[str, ModuleType] = {
    "classification": classification,
    "similarity_to_init": similarity_to_init,
    "weight_change": weight_change,
}
MAIN = "eval"  # the name of the evaluator configured by ``config.eval``


def _specs(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Every evaluator's raw settings by name, the main one first."""
    specs = {MAIN: {"type": "classification", "every_steps": config.eval.every_steps,
                    "batch_size": config.eval.batch_size}}
    for name, spec in config.evals.items():
        if name == MAIN:
            raise ConfigError(f"evals.{MAIN} is the main evaluation, configured by "
                              f"config.eval; give this evaluator another name")
        if not isinstance(spec, dict | ml_collections.ConfigDict):
            raise ConfigError(f"evals.{name} must be a dict {{'type': ..., 'every_steps': "
                              f"...}}, got {spec!r}")
        specs[name] = dict(spec)
    return specs


def _options(name: str, spec: dict[str, Any]) -> tuple[ModuleType, dict[str, Any]]:
    """The evaluator module of ``spec`` and its options with defaults filled in."""
    if "type" not in spec:
        raise ConfigError(f"evals.{name} has no 'type'; choose one of: "
                          f"{', '.join(sorted(EVALUATORS))}")
    check_choice(f"evals.{name}.type", spec["type"], EVALUATORS)
    module = EVALUATORS[spec["type"]]
    options = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(options) - set(module.OPTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(module.OPTIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"evals.{name}: unknown option {unknown[0]!r}{hint} for type "
                          f"{spec['type']!r}; its options are: "
                          f"{', '.join(sorted(module.OPTIONS))}")
    return module, {**module.OPTIONS, **options}


def validate_evals(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks every evaluator's type and options; raises `ConfigError` naming the fix."""
    for name, spec in _specs(config).items():
        _, options = _options(name, spec)
        check_positive(f"evals.{name}.every_steps", options["every_steps"])
        size = options.get("batch_size")
        if size is not None and spec["type"] == "classification" and size % num_devices:
            raise ConfigError(f"evals.{name}.batch_size={size} must be a multiple of the "
                              f"{num_devices} devices it is split over")


def build_evaluators(config: ml_collections.ConfigDict,
                     context: EvalContext) -> list[Evaluator]:
    """The run's evaluators, the main one (``eval``) first."""
    evaluators = []
    for name, spec in _specs(config).items():
        module, options = _options(name, spec)
        evaluators.append(module.build(name, options, context))
    return evaluators


def build_group_evaluators(config: ml_collections.ConfigDict,
                           context: EvalContext) -> list[GroupEvaluator]:
    """The evaluators of a group of runs trained together (their common ``config``), the
    main one first; ``context.initial_variables`` holds every run's, stacked."""
    evaluators = []
    for name, spec in _specs(config).items():
        module, options = _options(name, spec)
        evaluators.append(module.build_group(name, options, context))
    return evaluators


__all__ = ["EVALUATORS", "MAIN", "EvalContext", "Evaluator", "GroupEvaluator",
           "build_evaluators", "build_group_evaluators", "evaluator", "validate_evals"]


def evaluator(type_: str, **options: Any) -> dict[str, Any]:
    """One entry of ``config.evals``: ``{"type": type_, ...}`` with every option of the type,
    each at its default unless given, so that a flag can override any of them.

    Args:
      type_: a key of `EVALUATORS`.
      **options: options of that type (``every_steps`` included).

    Returns:
      The entry, e.g. ``c.evals.similarity_to_init = evaluator("similarity_to_init",
      every_steps=25)``.

    Raises:
      ConfigError: an unknown type or option (the message lists the valid ones).
    """
    _, full = _options(type_, {"type": type_, **options})
    return {"type": type_, **full}
