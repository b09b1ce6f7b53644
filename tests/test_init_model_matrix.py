"""Every initializer on every model of the zoo (slow: builds each model's variables).

The "pretrained" source is the model's own variables, shifted, standing in for a weight
file of the same architecture (slim models take the full model's variables, as they would
take ImageNet weights). A strategy works on a model when it returns variables of exactly
the template's structure, shapes and dtypes, all finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.init import INITIALIZERS, initialize
from transfusion_jax.models import MODELS, build_model

pytestmark = pytest.mark.slow

SIZES = {"inception_v3": 75, "googlenet": 64}
SLIM_SOURCE = {"slim_resnet18": "resnet18", "slim_resnet50": "resnet50"}


def options_for(name: str, blocks: tuple[str, ...]) -> dict:
    return {"transfusion": {"k": 2}, "reinit": {"n": 1}, "slim": {"through": blocks[2]},
            "pretrained": {"dont_load": ()}, "shuffled": {}, "mean_var": {}}.get(name, {})


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_setting(request):
    name = request.param
    size = SIZES.get(name, 32)
    x = jnp.zeros((1, size, size, 3))
    model = build_model(name, 10)
    template = model.init(jax.random.PRNGKey(0), x)
    source_model = build_model(SLIM_SOURCE[name], 10) if name in SLIM_SOURCE else model
    source = jax.tree.map(lambda v: v + 0.01, source_model.init(jax.random.PRNGKey(1), x))
    return name, model, template, source


@pytest.mark.parametrize("init_name", sorted(INITIALIZERS))
def test_initializer_works_on_model(model_setting, init_name):
    name, model, template, source = model_setting
    blocks = model.block_names()
    options = options_for(init_name, blocks)
    if name in SLIM_SOURCE and init_name in ("pretrained", "mean_var", "shuffled"):
        # A slim model's top is thinner than the full source: load only its bottom.
        options["dont_load"] = tuple(f"^{b}/" for b in blocks[3:])
    if name in SLIM_SOURCE and init_name == "reinit":
        options["n"] = len(blocks) - 3
    out = initialize(init_name, jax.random.PRNGKey(2), template, source=source, blocks=blocks,
                     **options)
    assert jax.tree.structure(out) == jax.tree.structure(template)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(template), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.isfinite(np.asarray(a)).all()
