"""Parity with torchvision: its (random) weights, written by ``torch.save`` and read back without
torch, give the same eval-mode logits in the Flax models. Skipped where torch is absent.

Both sides compute in float64 from the same float32 weights (the Flax logits are then
rounded to float32, as the model contract says), where the logits must agree within 1e-4 (a
wrong layer gives differences of order one). In float32 these random deep nets amplify
rounding: torch's own float32 and float64 logits differ by up to ~3e-4 for Inception-v3, so
the float32 check allows 1e-3 of the largest logit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.models import MODELS
from transfusion_jax.weights import load_pretrained

REASON = "parity with torchvision needs torch and torchvision installed (as on a GPU box)"
torch = pytest.importorskip("torch", reason=REASON)
torchvision = pytest.importorskip("torchvision", reason=REASON)


def _torchvision_model(name: str):
    models = torchvision.models
    if name == "resnet50":
        return models.resnet50(weights=None)
    if name == "inception_v3":
        return models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    return models.googlenet(weights=None, aux_logits=True, init_weights=True)


@pytest.mark.parametrize("name,size,legacy", [("resnet50", 224, True),
                                              ("inception_v3", 299, False),
                                              ("googlenet", 224, False)])
def test_flax_logits_match_torchvision(tmp_path, name, size, legacy):
    torch.manual_seed(0)
    reference = _torchvision_model(name)
    # Non-trivial BatchNorm: random affine parameters, running statistics calibrated on random
    # images (cumulative average) so activations, and logits, stay of order one.
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.reset_running_stats()
                module.momentum = None
        reference.train()
        reference(torch.randn(8, 3, size, size))
    reference.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected32 = reference(x).numpy()
        expected64 = reference.double()(x.double()).numpy()
    assert 0.01 < np.abs(expected32).max() < 1000
    path = tmp_path / f"{name}.pth"
    torch.save(reference.float().state_dict(), path, _use_new_zipfile_serialization=not legacy)
    x_nhwc = x.numpy().transpose(0, 2, 3, 1)

    model = MODELS[name](1000)
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    variables = load_pretrained(name, path, template)
    with jax.default_matmul_precision("highest"):
        logits32, _ = jax.jit(model.apply)(variables, x_nhwc)
    tolerance = 1e-3 * max(1.0, float(np.abs(expected32).max()))
    np.testing.assert_allclose(np.asarray(logits32), expected32, atol=tolerance, rtol=0)

    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        model64 = MODELS[name](1000, dtype=jnp.float64)
        variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        logits64, _ = jax.jit(model64.apply)(variables64, x_nhwc.astype(np.float64))
        logits64 = np.asarray(logits64)
    np.testing.assert_allclose(logits64, expected64, atol=1e-4, rtol=0)
