"""Similarity between stacked checkpoints' representations, streamed over a dataset split.

The one place that turns ``(model, stacked variables, layers, data)`` into exact full-data
similarities: the model is vmapped over the checkpoint axis (`activations`), batches stream
into the exact accumulators of `transfusion_jax.similarity.streaming`, and linear CKA (and,
for the pairs asked, SVCCA) are read off at the end. Used by the similarity sweep of one run
and by the comparison of checkpoints from several runs (`cross_run`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np

from transfusion_jax.analysis.activations import make_stacked_forward, stacked_activation_batches
from transfusion_jax.data import eval_batches, open_source
from transfusion_jax.similarity import streaming


@dataclasses.dataclass
class StreamedSimilarity:
    """Per requested pair of (checkpoint, layer) items: ``values[name] (Q,)``.

    Items are numbered ``c * L + l``; ``svcca`` is NaN for pairs not asked for.
    """

    pairs: np.ndarray
    values: dict[str, np.ndarray]
    num_examples: int


def same_layer_pairs(num_checkpoints: int, num_layers: int) -> np.ndarray:
    """Every checkpoint pair ``c1 <= c2`` of each layer: ``(Q, 2)`` item indices."""
    c1, c2 = np.triu_indices(num_checkpoints)
    layers = np.arange(num_layers)
    first = (c1[:, None] * num_layers + layers).ravel()
    second = (c2[:, None] * num_layers + layers).ravel()
    return np.stack([first, second], axis=1)


def streamed_similarity(model: nn.Module, variables: Any, layers: Sequence[str],
                        data: ml_collections.ConfigDict, split: str, *, pairs: np.ndarray,
                        reduction: str = "mean_pool", batch_size: int = 250,
                        max_examples: int = 0, debiased: bool = False,
                        svcca_pairs: Sequence[int] = (),
                        svcca_keep: float = 0.99) -> StreamedSimilarity:
    """Linear CKA for ``pairs`` (and SVCCA for the pair indices ``svcca_pairs``).

    Args:
      model: the architecture shared by the stacked checkpoints.
      variables: ``{"params", "batch_stats"}`` with a leading ``(C,)`` axis.
      layers: model outputs compared (``out`` keys).
      data: a ``config.data`` section; ``split`` of it is read in order.
      pairs: ``(Q, 2)`` item indices (``c * L + l``).
      reduction: how conv maps become ``(n, d)`` (`transfusion_jax.similarity.REDUCTIONS`).
      batch_size: examples per forward pass.
      max_examples: 0 = the whole split.
      debiased: the debiased CKA estimator.
      svcca_pairs: indices into ``pairs`` that also get SVCCA (an eigendecomposition each).
      svcca_keep: variance fraction (or number of directions) SVCCA keeps.
    """
    source, _ = open_source(data, split)
    forward = make_stacked_forward(model, list(layers), reduction)
    acts = stacked_activation_batches(forward, variables,
                                      eval_batches(source, data, batch_size, data.num_threads),
                                      max_examples=max_examples)
    first = next(acts)
    spec = streaming.StreamSpec.create(first, pairs=pairs, debiased=debiased)
    stats = streaming.update(streaming.init(spec, first), first, spec=spec)
    for batch in acts:
        stats = streaming.update(stats, batch, spec=spec)
    values = {"linear_cka": np.asarray(streaming.linear_cka(stats, spec=spec,
                                                            debiased=debiased))}
    if len(svcca_pairs):
        values["svcca"] = np.asarray(streaming.cca_similarity(
            stats, spec=spec, method="svcca", keep=svcca_keep, only=list(svcca_pairs)))
    return StreamedSimilarity(np.asarray(pairs), values, int(stats.count))
