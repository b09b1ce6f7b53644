"""Representation similarity: CCA, SVCCA, PWCCA, linear/RBF CKA, Procrustes; batched, streaming.

Representations are ``(n_examples, n_features)``; reduce conv maps first with `reduce_conv`
(``flatten_positions``, ``mean_pool``, ``flatten_all``; ``layout='NHWC'`` or ``'NCHW'``).
Every function is pure ``jnp``, jitted with static flags and usable on NumPy, JAX or PyTorch
arrays (torch tensors are detached, moved to the host and half types upcast, `interop`).
Degenerate input (constant or non-finite representations, too few examples) raises
`SimilarityInputError` when called with concrete arrays. Arithmetic is scale-safe (`scale`)
and matmuls run at full float32 precision on every backend, not a GPU's TF32 default
(`precision`).

This package is a leaf: it imports nothing of the project but `transfusion_jax.parallel`.
"""

from transfusion_jax.similarity import (
    batched,
    batched_cca,
    interop,
    layout,
    memory,
    minibatch,
    streaming,
)
from transfusion_jax.similarity.batched import (
    all_pairs,
    linear_cka_matrix,
    linear_cka_pairs,
    linear_cka_to_reference,
    reference_pairs,
)
from transfusion_jax.similarity.batched_cca import cca_matrix, cca_pairs, cca_to_reference
from transfusion_jax.similarity.cca_core import CCAResult, cca, cca_from_cov
from transfusion_jax.similarity.cka import (
    center_gram,
    cka_from_grams,
    gram_linear,
    gram_rbf,
    linear_cka,
    rbf_cka,
)
from transfusion_jax.similarity.layout import ItemLayout, as_array, layout_of
from transfusion_jax.similarity.memory import SimilarityMemoryError
from transfusion_jax.similarity.procrustes import procrustes_distance
from transfusion_jax.similarity.pwcca_core import PWCCAResult, pwcca, pwcca_from_cov
from transfusion_jax.similarity.reductions import (
    LAYOUTS,
    REDUCTIONS,
    flatten_all,
    flatten_positions,
    mean_pool,
    reduce_conv,
)
from transfusion_jax.similarity.svcca_core import svcca, svcca_from_cov
from transfusion_jax.similarity.validation import SimilarityInputError

__all__ = [
    "CCAResult",
    "ItemLayout",
    "LAYOUTS",
    "PWCCAResult",
    "REDUCTIONS",
    "SimilarityInputError",
    "SimilarityMemoryError",
    "all_pairs",
    "as_array",
    "batched",
    "batched_cca",
    "cca",
    "cca_from_cov",
    "cca_matrix",
    "cca_pairs",
    "cca_to_reference",
    "center_gram",
    "cka_from_grams",
    "flatten_all",
    "flatten_positions",
    "gram_linear",
    "gram_rbf",
    "interop",
    "layout",
    "layout_of",
    "linear_cka",
    "linear_cka_matrix",
    "linear_cka_pairs",
    "linear_cka_to_reference",
    "mean_pool",
    "memory",
    "minibatch",
    "procrustes_distance",
    "pwcca",
    "pwcca_from_cov",
    "rbf_cka",
    "reduce_conv",
    "reference_pairs",
    "streaming",
    "svcca",
    "svcca_from_cov",
]
