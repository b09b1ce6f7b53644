"""Conv-map layout is explicit, and PyTorch tensors (NCHW, bfloat16, requiring grad) work.

The NumPy tests run everywhere; the torch tests where torch is installed (CI has none).
"""

import numpy as np
import pytest

from transfusion_jax import similarity as sim
from transfusion_jax.similarity import interop, streaming


def _maps(seed=0, n=12, c=6, h=4, w=3):
    """Two related conv maps in NHWC, with channel structure that differs from spatial."""
    r = np.random.default_rng(seed)
    a = np.maximum(r.standard_normal((n, h, w, c)) + np.linspace(-1, 1, c), 0)
    b = np.maximum(a @ r.standard_normal((c, c + 2)) + 0.3 * r.standard_normal(
        (n, h, w, c + 2)), 0)
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("reduction", sorted(sim.REDUCTIONS))
def test_nchw_with_layout_equals_nhwc(reduction):
    a, _ = _maps()
    nchw = np.transpose(a, (0, 3, 1, 2))
    want = sim.reduce_conv(a, reduction, layout="NHWC")
    got = sim.reduce_conv(nchw, reduction, layout="NCHW")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert want.shape[1] == {"mean_pool": 6, "flatten_positions": 6, "flatten_all": 72}[
        reduction]


def test_4d_numpy_without_layout_is_refused_with_the_fix():
    a, _ = _maps()
    with pytest.raises(sim.SimilarityInputError, match="layout='NHWC'.*layout='NCHW'"):
        sim.reduce_conv(a, "mean_pool")
    with pytest.raises(sim.SimilarityInputError, match="layout must be one of"):
        sim.reduce_conv(a, "mean_pool", layout="NWHC")
    with pytest.raises(sim.SimilarityInputError, match="layout="):
        sim.linear_cka(a, a)  # a 4-D map straight into an estimator


def test_nchw_read_as_nhwc_gives_different_numbers():
    """What the explicit layout prevents: channels mistaken for a spatial axis."""
    a, b = _maps(c=6, h=6, w=6)
    a_t = np.transpose(a, (0, 3, 1, 2))
    b_t = np.transpose(b, (0, 3, 1, 2))
    right = float(sim.linear_cka(sim.reduce_conv(a_t, "mean_pool", layout="NCHW"),
                                 sim.reduce_conv(b_t, "mean_pool", layout="NCHW")))
    misread = [sim.reduce_conv(m, "mean_pool", layout="NHWC") for m in (a_t, b_t)]
    assert misread[0].shape == (12, 6) and misread[1].shape == (12, 6)  # widths as channels
    assert abs(float(sim.linear_cka(*misread)) - right) > 0.05


# ------------------------------------------------------------------------------ torch


def test_torch_nchw_tensors_are_read_as_nchw():
    torch = pytest.importorskip("torch")
    a, b = _maps(seed=1)
    ta = torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))
    tb = torch.from_numpy(np.ascontiguousarray(np.transpose(b, (0, 3, 1, 2))))
    for reduction in sim.REDUCTIONS:
        np.testing.assert_array_equal(np.asarray(sim.reduce_conv(ta, reduction)),
                                      np.asarray(sim.reduce_conv(a, reduction, layout="NHWC")))
    # channels_last memory format keeps the logical (n, c, h, w) shape: same answer.
    tl = ta.contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(np.asarray(sim.reduce_conv(tl, "mean_pool")),
                                  np.asarray(sim.reduce_conv(a, "mean_pool", layout="NHWC")))
    want = float(sim.svcca(sim.reduce_conv(a, "mean_pool", layout="NHWC"),
                           sim.reduce_conv(b, "mean_pool", layout="NHWC")).mean)
    got = float(sim.svcca(sim.reduce_conv(ta, "mean_pool"), sim.reduce_conv(tb, "mean_pool")).mean)
    assert got == pytest.approx(want, abs=1e-6)


def test_torch_bfloat16_and_grad_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(2)
    x = r.standard_normal((40, 6)).astype(np.float32)
    y = (x[:, :4] + 0.5 * r.standard_normal((40, 4))).astype(np.float32)
    want = float(sim.linear_cka(x, y))
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = torch.from_numpy(y) * 1.0  # a non-leaf tensor in an autograd graph
    assert float(sim.linear_cka(tx, ty)) == pytest.approx(want, abs=1e-6)
    assert float(sim.cca(tx, ty).mean) == pytest.approx(float(sim.cca(x, y).mean), abs=1e-5)
    bx, by = tx.to(torch.bfloat16), ty.to(torch.bfloat16)
    got = float(sim.linear_cka(bx, by))  # upcast to float32: bfloat16-rounded inputs
    rounded = float(sim.linear_cka(bx.float().detach().numpy(), by.float().detach().numpy()))
    assert got == pytest.approx(rounded, abs=1e-6)
    assert got == pytest.approx(want, abs=2e-2)
    maps = torch.from_numpy(np.ascontiguousarray(np.transpose(_maps()[0], (0, 3, 1, 2))))
    maps = maps.to(torch.bfloat16).requires_grad_(True)
    assert sim.reduce_conv(maps, "mean_pool").shape == (12, 6)
    acts = [torch.from_numpy(np.stack([x, x[::-1]])).requires_grad_(True),
            torch.from_numpy(np.stack([y, y])).to(torch.bfloat16)]
    m = np.asarray(sim.linear_cka_matrix(acts))
    assert m.shape == (4, 4) and np.isfinite(m).all()
    assert m[0, 1] == pytest.approx(want, abs=2e-2)  # checkpoint 0, layer 0 vs layer 1
    assert streaming.StreamSpec.create(acts).layout == sim.ItemLayout(2, (6, 4))
    assert interop.from_torch(bx).dtype == np.float32


def test_non_torch_objects_pass_through():
    x = np.ones((3, 2))
    assert interop.accept(x) is x and not interop.is_torch(x)


def test_resnet18_nchw_maps_keep_their_channels():
    """Issue 15's case: torchvision ResNet-18 maps of 64x64 images are (n, c, h, w); read as
    (n, h, w, c) mean_pool kept 16 "features" of layer1 and 2 of layer4."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    models = [torchvision.models.resnet18(weights=None).eval() for _ in range(2)]
    images = torch.randn(8, 3, 64, 64)
    maps = []
    for model in models:
        out = {}
        model.layer1.register_forward_hook(lambda m, i, o, out=out: out.update(layer1=o))
        model.layer4.register_forward_hook(lambda m, i, o, out=out: out.update(layer4=o))
        model(images)  # the outputs still require grad
        maps.append(out)
    assert tuple(maps[0]["layer1"].shape) == (8, 64, 16, 16)
    assert sim.reduce_conv(maps[0]["layer1"], "mean_pool").shape == (8, 64)
    assert sim.reduce_conv(maps[0]["layer4"], "mean_pool").shape == (8, 512)
    misread = [sim.reduce_conv(maps[0][k].detach().numpy(), "mean_pool", layout="NHWC")
               for k in ("layer1", "layer4")]
    assert [m.shape[1] for m in misread] == [16, 2]
    for key in ("layer1", "layer4"):
        a, b = (m[key] for m in maps)
        nhwc = [np.transpose(t.detach().numpy(), (0, 2, 3, 1)) for t in (a, b)]
        want = float(sim.linear_cka(*(sim.reduce_conv(t, "flatten_positions", layout="NHWC")
                                      for t in nhwc)))
        got = float(sim.linear_cka(sim.reduce_conv(a, "flatten_positions"),
                                   sim.reduce_conv(b, "flatten_positions")))
        assert got == pytest.approx(want, abs=1e-6)
