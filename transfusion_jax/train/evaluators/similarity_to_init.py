"""The ``similarity_to_init`` evaluator: how far each block's representation has moved from
the run's own initialisation, logged while training (Transfusion's learning dynamics,
Raghu et al. 2019, Fig. 6: CCA similarity of each layer to its initialisation over training).

On a fixed evaluation subset (the first ``examples`` of ``split``), every evaluation computes
each block's representation (conv maps reduced by ``reduction``, default ``mean_pool``) and
its linear CKA (Kornblith et al. 2019; biased unless ``debiased``), and optionally SVCCA
(Raghu et al. 2017), with the step-0 representation of the same block on the same examples.
The step-0 representations are computed once, when training starts (from checkpoint 0 when a
run resumes), and kept on the device; each evaluation is one compiled call: the forward pass
over the subset in chunks of ``batch_size`` and the similarities of every block (of every
run, for a group of runs trained together: `build_group`). The values
equal those of the similarity job run afterwards on the checkpoint of that step with the same
examples (a test).

Keys: ``linear_cka/<block>`` (and ``svcca/<block>``); 1 = unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax import parallel
from transfusion_jax.config import ConfigError, check_choice
from transfusion_jax.data import first_examples, open_source
from transfusion_jax.models import representation_names
from transfusion_jax.similarity import REDUCTIONS, linear_cka, reduce_conv, svcca
from transfusion_jax.train.evaluators.base import EvalContext, split_runs

OPTIONS = {"every_steps": 25, "examples": 512, "batch_size": 256, "split": "",
           "layers": (), "reduction": "mean_pool", "debiased": False, "svcca": False,
           "svcca_keep": 0.99}


@functools.cache
def _representations(model: Any, layers: tuple[str, ...], reduction: str) -> Callable:
    """Jitted ``f(variables, chunks (k, b, h, w, c)) -> tuple of (k * m, d_l)`` per layer
    (``m = b``, or ``b * h * w`` for ``flatten_positions``): the subset's representations."""
    def chunk(variables, images):
        _, out = model.apply(variables, images, train=False)
        return tuple(reduce_conv(out[name], reduction, layout="NHWC").astype(jnp.float32)
                     for name in layers)

    def reps(variables, chunks):
        per_chunk = jax.lax.map(lambda images: chunk(variables, images), chunks)
        return tuple(r.reshape(-1, r.shape[-1]) for r in per_chunk)

    return jax.jit(reps)


@functools.cache
def _similarities(model: Any, layers: tuple[str, ...], reduction: str, rows: tuple[int, ...],
                  debiased: bool, with_svcca: bool, keep: float) -> Callable:
    """Jitted ``g(variables, chunks, reference) -> {key: scalar}``: one evaluation."""
    reps_fn = _representations(model, layers, reduction)

    def evaluate(variables, chunks, reference):
        reps = reps_fn(variables, chunks)
        result = {}
        for name, x, x0, n in zip(layers, reps, reference, rows, strict=True):
            x = x[:n]  # drop the padding of the last chunk
            result[f"linear_cka/{name}"] = linear_cka(x0, x, debiased=debiased)
            if with_svcca:
                result[f"svcca/{name}"] = svcca(x0, x, keep=keep).mean
        return result

    return jax.jit(evaluate)


@functools.cache
def _group_similarities(model: Any, layers: tuple[str, ...], reduction: str,
                        rows: tuple[int, ...], debiased: bool, with_svcca: bool,
                        keep: float) -> Callable:
    """`_similarities` mapped over stacked runs (variables and references; the images are
    shared): ``g(variables (R, ...), chunks, reference (R, rows, d)) -> {key: (R,)}``."""
    one = _similarities(model, layers, reduction, rows, debiased, with_svcca, keep)
    return jax.jit(jax.vmap(one, in_axes=(0, None, 0)))


@dataclasses.dataclass
class SimilarityToInit:
    name: str
    every_steps: int
    layers: tuple[str, ...]
    evaluate: Callable
    chunks: jax.Array
    reference: tuple[jax.Array, ...]

    def run(self, state: Any, step: int) -> dict[str, float]:
        values = self.evaluate(state.variables, self.chunks, self.reference)
        return {k: float(v) for k, v in jax.device_get(values).items()}


def _chunks(images: np.ndarray, batch_size: int) -> np.ndarray:
    """``(n, ...)`` -> ``(ceil(n / b), b, ...)``, the last chunk padded with zeros."""
    b = min(batch_size, len(images))
    pad = -len(images) % b
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    return padded.reshape(-1, b, *images.shape[1:])


def _subset(name: str, options: dict[str, Any],
            context: EvalContext) -> tuple[tuple[str, ...], np.ndarray]:
    """The checked layers and the fixed evaluation images ``(n, h, w, c)``."""
    check_choice(f"evals.{name}.reduction", options["reduction"], REDUCTIONS)
    valid = representation_names(context.model, (1, context.data.image_size,
                                                  context.data.image_size,
                                                  context.data.channels))
    layers = tuple(options["layers"]) or tuple(valid)
    unknown = sorted(set(layers) - set(valid))
    if unknown:
        raise ConfigError(f"evals.{name}.layers {unknown} are not outputs of the model; valid: "
                          f"{', '.join(valid)}")
    source, _ = open_source(context.data, options["split"] or context.data.eval_split)
    images = first_examples(source, context.data, int(options["examples"]),
                            context.data.num_threads)["image"]
    return layers, images


def _rows(widths: list[int], chunks: jax.Array, num_images: int) -> tuple[int, ...]:
    """Real rows of each layer's representation, from its padded row count ``widths``."""
    return tuple(num_images * (w // chunks.shape[0] // chunks.shape[1]) for w in widths)


def _similarity_options(options: dict[str, Any]) -> tuple[bool, bool, float]:
    return bool(options["debiased"]), bool(options["svcca"]), float(options["svcca_keep"])


def build(name: str, options: dict[str, Any], context: EvalContext) -> SimilarityToInit:
    layers, images = _subset(name, options, context)
    mesh = context.mesh
    chunks = parallel.replicate(mesh, _chunks(images, int(options["batch_size"])))
    initial = parallel.replicate(mesh, context.initial_variables)
    reps = _representations(context.model, layers, options["reduction"])(initial, chunks)
    rows = _rows([r.shape[0] for r in reps], chunks, len(images))
    reference = tuple(r[:n] for r, n in zip(reps, rows, strict=True))
    evaluate = _similarities(context.model, layers, options["reduction"], rows,
                             *_similarity_options(options))
    return SimilarityToInit(name, int(options["every_steps"]), layers, evaluate, chunks,
                            reference)


@dataclasses.dataclass
class GroupSimilarityToInit:
    name: str
    every_steps: int
    evaluate: Callable
    chunks: jax.Array
    reference: tuple[jax.Array, ...]  # each (R, rows, d)

    def run(self, state: Any, step: int) -> list[dict[str, float]]:
        return split_runs(self.evaluate(state.variables, self.chunks, self.reference))


def build_group(name: str, options: dict[str, Any],
                context: EvalContext) -> GroupSimilarityToInit:
    """Every run of a group against its own step-0 representations, one compiled call."""
    layers, images = _subset(name, options, context)
    mesh = context.mesh
    chunks = parallel.replicate(mesh, _chunks(images, int(options["batch_size"])))
    initial = parallel.place_runs(mesh, context.initial_variables)
    reps_fn = _representations(context.model, layers, options["reduction"])
    reps = jax.jit(jax.vmap(reps_fn, in_axes=(0, None)))(initial, chunks)
    rows = _rows([r.shape[1] for r in reps], chunks, len(images))
    reference = tuple(r[:, :n] for r, n in zip(reps, rows, strict=True))
    evaluate = _group_similarities(context.model, layers, options["reduction"], rows,
                                   *_similarity_options(options))
    return GroupSimilarityToInit(name, int(options["every_steps"]), evaluate, chunks,
                                 reference)
