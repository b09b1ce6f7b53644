"""Every matmul of the similarity engine runs at full float32 precision unless the caller asks.

On CPU this changes no number, so the tests read the traced programs: each ``dot_general``
must carry ``Precision.HIGHEST`` (a GPU's default would round to TF32).
"""

import jax
import numpy as np
import pytest

from tests.conftest import equations
from transfusion_jax import similarity as sim
from transfusion_jax.similarity import minibatch, precision, streaming


def _dot_precisions(jaxpr) -> list:
    """The ``precision`` of every dot_general in a jaxpr, sub-jaxprs (jit, scan, map) too."""
    return [e.params["precision"] for e in equations(jaxpr) if e.primitive.name == "dot_general"]


def _xy():
    r = np.random.default_rng(0)
    x = r.standard_normal((24, 6)).astype(np.float32)
    return x, (x[:, :5] + 0.3 * r.standard_normal((24, 5))).astype(np.float32)


_ACTS = np.random.default_rng(1).standard_normal((2, 2, 24, 5)).astype(np.float32)
_PAIRS = np.array([[0, 1], [2, 3]])

CALLS = {
    "linear_cka": lambda x, y: sim.linear_cka(x, y),
    "linear_cka_debiased_gram": lambda x, y: sim.linear_cka(x, y, debiased=True),
    "rbf_cka": lambda x, y: sim.rbf_cka(x, y),
    "cka_from_grams": lambda x, y: sim.cka_from_grams(sim.gram_linear(x), sim.gram_linear(y)),
    "procrustes_distance": lambda x, y: sim.procrustes_distance(x, y),
    "cca": lambda x, y: sim.cca(x, y).mean,
    "svcca": lambda x, y: sim.svcca(x, y, keep=0.9).mean,
    "pwcca": lambda x, y: sim.pwcca(x, y).mean,
    "linear_cka_matrix_gram": lambda x, y: sim.linear_cka_matrix(
        _ACTS + x[:1, :1], form="gram", block_size=8),
    "linear_cka_matrix_feature": lambda x, y: sim.linear_cka_matrix(
        _ACTS + x[:1, :1], form="feature"),
    "linear_cka_pairs": lambda x, y: sim.linear_cka_pairs(_ACTS + x[:1, :1], _PAIRS),
    "cca_pairs": lambda x, y: sim.cca_pairs(_ACTS + x[:1, :1], _PAIRS, method="pwcca"),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_matmul_runs_at_highest_precision(name):
    x, y = _xy()
    found = _dot_precisions(jax.make_jaxpr(CALLS[name])(x, y).jaxpr)
    assert found, f"{name}: no matmul traced"
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert all(p == highest for p in found), (name, found)
    assert precision.caller_precision() is None  # nothing leaks into the caller's config


def test_caller_choice_is_kept():
    x, y = _xy()
    with jax.default_matmul_precision("tensorfloat32"):
        found = _dot_precisions(jax.make_jaxpr(CALLS["linear_cka"])(x, y).jaxpr)
    assert found and all(p != (jax.lax.Precision.HIGHEST,) * 2 for p in found), found


@pytest.mark.parametrize("fn", [
    streaming.update, streaming.linear_cka, streaming.cca_similarity, minibatch.update,
    minibatch.cka, sim.linear_cka_to_reference, sim.cca_matrix, sim.cca_to_reference,
    sim.cca_from_cov, sim.svcca_from_cov, sim.pwcca_from_cov, sim.gram_rbf,
], ids=lambda f: f.__module__.rsplit(".", 1)[-1] + "." + f.__name__)
def test_other_entry_points_are_wrapped(fn):
    # Streaming entry points check their input on the host, so they are not traced here
    # (nor the rest, reached through the functions above); they carry the same wrapper.
    assert getattr(fn, precision.MARK, False), fn


def test_wrapper_sets_highest_while_running_and_restores():
    seen = []
    probe = precision.full_precision(lambda: seen.append(precision.caller_precision()))
    probe()
    assert seen == ["highest"] and precision.caller_precision() is None
