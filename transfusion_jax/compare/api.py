"""`compare`: stream batches through two models and compare their layers pairwise."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from transfusion_jax.compare import inputs
from transfusion_jax.compare.accumulate import CCA_METHODS, FullData, Minibatch
from transfusion_jax.compare.adapters import as_adapter
from transfusion_jax.compare.inputs import CompareError
from transfusion_jax.compare.result import SimilarityMatrix

METHODS = ("linear_cka", "rbf_cka", *CCA_METHODS)
ESTIMATORS = ("full", "minibatch")
Layers = Sequence[str] | Mapping[str, str]


def _check_options(method: str, estimator: str, reduction: str, max_examples: int) -> None:
    if method not in METHODS:
        raise CompareError(f"unknown method {method!r}; choose one of {METHODS}.")
    if estimator not in ESTIMATORS:
        raise CompareError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}.")
    if estimator == "minibatch" and method in CCA_METHODS:
        raise CompareError(f"method {method!r} has no minibatch estimator; use "
                           "estimator='full' (exact streaming covariances).")
    if estimator == "full" and method == "rbf_cka":
        raise CompareError("rbf_cka needs every example's Gram matrix at once; use "
                           "estimator='minibatch', or similarity.rbf_cka on arrays in memory.")
    if max_examples < 0:
        raise CompareError(f"max_examples must be >= 0 (0 = all); got {max_examples}.")
    inputs.check_reduction(reduction)


def _role(role: str, name: str) -> str:
    return role if name == role else f"{role} ({name})"


def _check_rows(reps: Sequence[Any], labels: Sequence[str]) -> None:
    rows = inputs.rows_of(reps)
    if len(set(rows)) > 1:
        detail = ", ".join(f"{label}: {r}" for label, r in zip(labels, rows, strict=True))
        raise CompareError(
            f"the layers give different numbers of rows for one batch ({detail}); both models "
            "must return one row per example of the batch (with flatten_positions, h*w rows "
            "per example, so every compared layer needs the same h x w)."
        )


def compare(
    model_a: Any,
    model_b: Any,
    batches: Iterable[Any],
    layers_a: Layers,
    layers_b: Layers | None = None,
    *,
    method: str = "linear_cka",
    debiased: bool = False,
    reduction: str = "mean_pool",
    estimator: str = "full",
    max_examples: int = 0,
    names: tuple[str, str] = ("model A", "model B"),
    keep: float | int = 0.99,
) -> SimilarityMatrix:
    """Similarity of every layer of `model_a` to every layer of `model_b` on the same batches.

    Each batch runs once through each model; the chosen layers' activations are reduced to
    representations ``(m, d)`` (conv maps by `reduction`) and added to accumulators of all
    ``L_a x L_b`` pairs in one jitted update per batch. With ``estimator='full'`` these are the
    exact streaming statistics of `transfusion_jax.similarity.streaming`, so the result equals
    `similarity.linear_cka` (or `svcca`, ...) on all examples at once, at memory ``2 x
    (sum over pairs of d_a d_b + sum over layers of d^2)`` floats whatever the number of
    examples. ``estimator='minibatch'`` is the minibatch CKA of Nguyen, Raghu, Kornblith 2021
    (unbiased HSIC averaged over batches): an estimate of the population CKA that differs
    from the full-data value and depends on the batch size.

    Args:
      model_a, model_b: a ``(flax module, variables)`` tuple (`FlaxModel`; the project's
        ``logits, out = apply(variables, x, train=False)`` contract, or module paths), a
        ``torch.nn.Module`` (`TorchModel`: forward hooks on ``named_modules()``), a callable
        ``f(input) -> {layer name: array}`` (`CallableModel`), or one of these adapters.
      batches: an iterable of batches: arrays, dicts whose ``"image"`` entry is the input,
        or tuples whose first element is the input (an adapter's ``get_input`` overrides
        this). Both models see the same examples. Read once, up to `max_examples`.
      layers_a: model A's layers: a list of names, or ``{display name: layer name}``.
      layers_b: model B's layers, same forms; ``None``: the same as `layers_a`.
      method: ``'linear_cka'`` (default), ``'cca'``, ``'svcca'``, ``'pwcca'`` (mean canonical
        correlation, full data only) or ``'rbf_cka'`` (minibatch only).
      debiased: linear CKA from the unbiased HSIC (Song et al. 2012); default biased, as
        Kornblith et al. 2019 and torch-cka. The minibatch estimator is always unbiased.
      reduction: conv maps ``(n, h, w, c)`` -> ``'mean_pool'`` ``(n, c)`` (default),
        ``'flatten_positions'`` ``(n*h*w, c)``, or ``'flatten_all'`` ``(n, h*w*c)``;
        2-D activations are used as they are.
      estimator: ``'full'`` (exact, default) or ``'minibatch'`` (each batch needs >= 4 rows;
        batches count equally, so keep their size constant).
      max_examples: stop after this many examples (0 = the whole iterator).
      names: display names of the two models (result labels, plot axes).
      keep: SVCCA's kept variance fraction (or number of directions).

    Returns:
      A `SimilarityMatrix`: ``values[i, j]`` compares ``layers_a[i]`` (rows, model A) with
      ``layers_b[j]`` (columns, model B); ``.plot()`` draws it.

    Raises:
      CompareError: an unknown layer (the error lists the valid names), an empty iterator,
        models that see different numbers of examples, activations that are not 2-D or 4-D,
        or an unknown option.
      SimilarityInputError: constant or non-finite representations, too few examples.
    """
    _check_options(method, estimator, reduction, max_examples)
    if len(names) != 2:
        raise CompareError(f"names must be two display names (model A, model B); got {names}.")
    role_a, role_b = _role("model A", names[0]), _role("model B", names[1])
    spec_a = inputs.layer_spec(layers_a, role_a)
    spec_b = spec_a if layers_b is None else inputs.layer_spec(layers_b, role_b)
    adapter_a, adapter_b = as_adapter(model_a, role_a), as_adapter(model_b, role_b)
    labels = ([f"{names[0]}:{k}" for k in spec_a] + [f"{names[1]}:{k}" for k in spec_b])
    acc, seen = None, 0
    with adapter_a.session(list(spec_a.values()), reduction, role_a) as forward_a, \
            adapter_b.session(list(spec_b.values()), reduction, role_b) as forward_b:
        for batch in batches:
            xa, xb = adapter_a.input_of(batch), adapter_b.input_of(batch)
            n, nb = inputs.num_examples(xa), inputs.num_examples(xb)
            if n != nb:
                raise CompareError(f"one batch gives {n} examples to model A and {nb} to model "
                                   "B; both must see the same examples.")
            if max_examples and seen + n > max_examples:
                n = max_examples - seen
                xa, xb = inputs.take(xa, n), inputs.take(xb, n)
            if n == 0:
                continue
            reps = forward_a(xa) + forward_b(xb)
            _check_rows(reps, labels)
            items = [r[None] for r in reps]  # (1, m, d): one "checkpoint" per stream item
            if acc is None:
                acc = (FullData(items, len(spec_a), debiased=debiased and method == "linear_cka")
                       if estimator == "full"
                       else Minibatch(items, len(spec_a),
                                      kernel="rbf" if method == "rbf_cka" else "linear"))
            acc.update(items)
            seen += n
            if max_examples and seen >= max_examples:
                break
    if acc is None:
        raise CompareError("the batch iterator yielded no examples; give it at least one "
                           "non-empty batch (a fresh iterator, not an exhausted one).")
    if estimator == "full":
        values = acc.result(method, debiased=debiased, keep=keep)
    else:
        values = acc.result()
    return SimilarityMatrix(values=values, layers_a=tuple(spec_a), layers_b=tuple(spec_b),
                            method=method, estimator=estimator,
                            debiased=debiased or estimator == "minibatch", reduction=reduction,
                            num_examples=seen, names=tuple(names))
