"""`compare` on PyTorch models: two random torchvision ResNet-18s (no weight download) give the
matrix a hand-written hooks + float64 in-memory CKA reference gives; the hooks are gone and
the train/eval mode restored afterwards, also on error; bfloat16 models work. Skipped where
torch and torchvision are not installed (``pip install 'transfusion_jax[torch]'``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests import similarity_reference as ref
from transfusion_jax.compare import CompareError, TorchModel, compare

REASON = "the PyTorch adapter needs torch and torchvision installed (the [torch] extra)"
torch = pytest.importorskip("torch", reason=REASON)
torchvision = pytest.importorskip("torchvision", reason=REASON)

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def resnets():
    """Two ResNet-18s with different random weights, and 32 random 32x32 images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only contend with JAX's
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(torchvision.models.resnet18(weights=None))
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    yield nets, x
    torch.set_num_threads(threads)


def _hooked_reference(net, x, layers):
    """The ~20 lines `compare` saves: hooks, no_grad, eval, mean over h, w, float32."""
    acts = {name: [] for name in layers}
    modules = dict(net.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda m, i, o, name=name: acts[name].append(o.detach().float().mean(dim=(2, 3))))
        for name in layers]
    net.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), 8):
                net(x[start:start + 8])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(acts[name]).double().numpy() for name in layers]


def _reference_matrix(a, b, x):
    ra, rb = _hooked_reference(a, x, LAYERS), _hooked_reference(b, x, LAYERS)
    return np.array([[ref.linear_cka(p, q) for q in rb] for p in ra])


def test_resnet18_matches_hooks_reference(resnets):
    (a, b), x = resnets
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.zeros(len(x))), batch_size=8)
    a.train()
    b.eval()
    m = compare(a, b, loader, LAYERS)
    assert a.training and not b.training  # each model's train/eval mode is restored
    assert all(not getattr(a, n)._forward_hooks and not getattr(b, n)._forward_hooks
               for n in LAYERS)
    assert m.layers_a == m.layers_b == tuple(LAYERS) and m.num_examples == len(x)
    want = _reference_matrix(a, b, torch.from_numpy(x))
    np.testing.assert_allclose(m.values, want, atol=1e-5)
    # NumPy batches (the input rule's tuple form) give the same matrix as tensors.
    again = compare(a, b, [(x[i:i + 8], None) for i in range(0, len(x), 8)], LAYERS)
    np.testing.assert_allclose(again.values, m.values, atol=1e-6)


def test_bfloat16_models(resnets):
    """bfloat16 outputs are upcast (and the input cast to the model's dtype)."""
    (a, b), x = resnets
    x = x[:16]  # bfloat16 convolutions are slow on CPUs
    a16, b16 = (torchvision.models.resnet18(weights=None) for _ in range(2))
    a16.load_state_dict(a.state_dict())
    b16.load_state_dict(b.state_dict())
    a16, b16 = a16.to(torch.bfloat16), b16.to(torch.bfloat16)
    m = compare(a16, b16, [x[i:i + 8] for i in range(0, len(x), 8)], LAYERS)
    want = _reference_matrix(a16, b16, torch.from_numpy(x).to(torch.bfloat16))
    np.testing.assert_allclose(m.values, want, atol=1e-5)
    full = compare(a, b, [x[i:i + 8] for i in range(0, len(x), 8)], LAYERS)
    np.testing.assert_allclose(m.values, full.values, atol=0.02)  # bfloat16 rounding only


def test_errors_and_cleanup(resnets):
    (a, b), x = resnets
    with pytest.raises(CompareError, match=r"unknown layer\(s\) \['layer5'\].*layer4\.1\.conv2"):
        compare(a, b, [x[:8]], ["layer1", "layer5"])

    def failing():
        yield x[:8]
        raise RuntimeError("loader broke")

    a.eval()
    with pytest.raises(RuntimeError, match="loader broke"):
        compare(TorchModel(a), b, failing(), LAYERS, {"fc": "fc", "pool": "avgpool"})
    assert not a.layer1._forward_hooks and not b.fc._forward_hooks and not a.training
    # avgpool's (n, 512, 1, 1) map and fc's (n, 1000) output mix 4-D and 2-D layers.
    m = compare(a, b, [x[:8], x[8:16]], ["layer4"], {"fc": "fc", "pool": "avgpool"})
    assert m.layers_b == ("fc", "pool") and m.values[0, 1] == pytest.approx(
        compare(a, b, [x[:8], x[8:16]], ["layer4"]).values[0, 0], abs=1e-6)
    # One module hooked by both sessions: a model compared with itself has CKA 1.
    assert compare(a, a, [x[:8], x[8:16]], ["layer4"]).values[0, 0] == pytest.approx(1, abs=1e-6)


def test_flatten_positions_channels_last(resnets):
    """Positions become rows channels-last, in the order of the examples."""
    (a, b), x = resnets
    m = compare(a, b, [x[:8], x[8:16]], ["layer3"], reduction="flatten_positions")
    rows = []
    for net in (a, b):
        out = []
        handle = net.layer3.register_forward_hook(lambda mod, i, o, out=out: out.append(o))
        net.eval()
        with torch.no_grad():
            net(torch.from_numpy(x[:16]))
        handle.remove()
        rows.append(out[0].permute(0, 2, 3, 1).reshape(-1, 256).double().numpy())
    assert m.values[0, 0] == pytest.approx(ref.linear_cka(*rows), abs=1e-5)
