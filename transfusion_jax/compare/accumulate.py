"""Accumulators of every (layer of A, layer of B) statistic, one jitted update per batch.

The ``L_a`` layers of model A and the ``L_b`` layers of model B are the items of one stream
(a list over layers of ``(1, m, d_l)``, `transfusion_jax.similarity.layout`), and only the
``L_a x L_b`` cross pairs ``(a, L_a + b)`` are requested, so each batch is one call of the
engine's jitted update whatever the number of pairs.

* `FullData`: the exact streaming accumulators (`similarity.streaming`): the values equal the
  in-memory functions on all examples at once. Memory: ``d_a * d_b`` floats per pair plus
  ``d^2`` per layer for its self block, times two for the compensated sums.
* `Minibatch`: the minibatch CKA of Nguyen, Raghu, Kornblith 2021 (`similarity.minibatch`):
  the unbiased HSIC averaged over batches, an estimate of the population CKA that differs from
  the full-data value (and depends on the batch size); ``P^2`` floats, ``P = L_a + L_b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from transfusion_jax.similarity import layout as layout_lib
from transfusion_jax.similarity import minibatch, streaming, validation

CCA_METHODS = ("cca", "svcca", "pwcca")


def cross_pairs(num_a: int, num_b: int) -> np.ndarray:
    """``(L_a * L_b, 2)`` item pairs ``(a, L_a + b)``, row-major over ``(a, b)``."""
    a, b = np.meshgrid(np.arange(num_a), np.arange(num_b), indexing="ij")
    return np.stack([a.ravel(), num_a + b.ravel()], axis=1)


class FullData:
    """Exact full-data linear CKA or CCA-family similarity of the cross pairs.

    Args:
      first: the first batch's items, a list over layers of ``(1, m, d_l)``.
      num_a: how many of the items are model A's layers (the rest are model B's).
      debiased: accumulate the moments of the debiased HSIC (Song et al. 2012).
    """

    def __init__(self, first: Sequence[jax.Array], num_a: int, *, debiased: bool):
        self.num_a, self.num_b = num_a, len(first) - num_a
        self.spec = streaming.StreamSpec.create(
            list(first), pairs=cross_pairs(self.num_a, self.num_b), debiased=debiased)
        self.stats = streaming.init(self.spec, list(first))

    def update(self, items: Sequence[jax.Array]) -> None:
        self.stats = streaming.update(self.stats, list(items), spec=self.spec)

    def result(self, method: str, *, debiased: bool, keep: float | int) -> np.ndarray:
        """``(L_a, L_b)`` similarity: ``'linear_cka'`` or one of `CCA_METHODS` (mean
        canonical correlation; ``keep`` is SVCCA's kept variance fraction or count)."""
        if method == "linear_cka":
            values = streaming.linear_cka(self.stats, spec=self.spec, debiased=debiased)
        else:
            values = streaming.cca_similarity(self.stats, spec=self.spec, method=method,
                                              keep=keep)
        return np.asarray(values).reshape(self.num_a, self.num_b)

    @property
    def num_bytes(self) -> int:
        """Bytes held by the accumulated statistics."""
        return sum(leaf.nbytes for leaf in jax.tree.leaves(self.stats))


class Minibatch:
    """Minibatch CKA (Nguyen et al. 2021) of the cross pairs; every batch needs ``m >= 4``.

    Args:
      first: the first batch's items, a list over layers of ``(1, m, d_l)``.
      num_a: how many of the items are model A's layers.
      kernel: ``'linear'`` or ``'rbf'`` (bandwidth ``sigma_frac`` x the in-batch median
        distance).
    """

    def __init__(self, first: Sequence[jax.Array], num_a: int, *, kernel: str = "linear",
                 sigma_frac: float = 0.8):
        self.num_a, self.kernel, self.sigma_frac = num_a, kernel, sigma_frac
        self.stats = minibatch.init(layout_lib.layout_of(list(first)),
                                    validation.compute_dtype(*first))

    def update(self, items: Sequence[jax.Array]) -> None:
        self.stats = minibatch.update(self.stats, list(items), kernel=self.kernel,
                                      sigma_frac=self.sigma_frac)

    def result(self) -> np.ndarray:
        """``(L_a, L_b)`` minibatch CKA."""
        return np.asarray(minibatch.cka(self.stats))[: self.num_a, self.num_a:]

    @property
    def num_bytes(self) -> int:
        return sum(leaf.nbytes for leaf in jax.tree.leaves(self.stats))
