"""Streaming state is sized before it is allocated; too big gives one error naming the fix."""

import jax
import numpy as np
import pytest

from transfusion_jax import similarity as sim
from transfusion_jax.similarity import memory, streaming


def _acts(widths=(5, 3, 8), c=2, n=6):
    r = np.random.default_rng(0)
    return [r.standard_normal((c, n, w)).astype(np.float32) for w in widths]


@pytest.mark.parametrize("debiased", [False, True])
def test_state_bytes_is_what_init_allocates(debiased):
    acts = _acts()
    spec = streaming.StreamSpec.create(acts, pairs=[(0, 3), (1, 4), (2, 2)], debiased=debiased)
    stats = streaming.init(spec, acts)
    allocated = sum(leaf.nbytes for leaf in jax.tree.leaves(stats))
    assert abs(allocated - spec.state_bytes(np.float32)) <= 16
    assert spec.state_bytes(np.float32, replicates=3) == 3 * spec.state_bytes(np.float32)


def test_too_big_a_state_is_refused_before_allocation():
    """Flattened conv maps: one error with the size, the formula and the remedies."""
    acts = [np.zeros((2, 1, w), np.float32) for w in (65536, 32768)]  # 32x32x64, 16x16x128
    spec = streaming.StreamSpec.create(acts, pairs=[(0, 2), (1, 3)], debiased=False)
    need = spec.state_bytes(np.float32)
    assert need > 2 * 4 * 65536**2  # the first layer's two self blocks and its pair block
    with pytest.raises(memory.SimilarityMemoryError) as err:
        streaming.init(spec, acts, memory_limit=2**30)
    text = str(err.value)
    for part in ("GiB", "d_i*d_j", "65,536", "mean_pool", "fewer layers", "minibatch",
                 "form='gram'", "1.00 GiB available"):
        assert part in text, (part, text)
    assert isinstance(err.value, sim.SimilarityInputError)  # the CLI prints one error: line


def test_available_memory_is_known_on_this_machine():
    assert memory.available_bytes() > 0
    small = _acts()
    spec = streaming.StreamSpec.create(small)
    streaming.init(spec, small)  # a small state passes the real check
