"""First-layer filter grids: the first conv of each model family, grid geometry and
per-filter normalisation, and the written figure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.analysis.filters import (
    filter_grid,
    first_conv_kernel,
    first_conv_path,
    plot_filter_grids,
)
from transfusion_jax.models import build_model


@pytest.mark.parametrize("name,options,size,expected", [
    ("resnet18", {}, 32, "stem/conv1/kernel"),
    ("efficientnet_lite0", {}, 32, "stem/conv/kernel"),
    ("googlenet", {}, 32, "conv2d0/conv/kernel"),
    ("inception_v3", {"aux_logits": True}, 107, "Conv2d_1a_3x3/conv/kernel"),
])
def test_first_conv_path_of_model_families(name, options, size, expected):
    model = build_model(name, 10, **options)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, size, size, 3))))
    assert first_conv_path(shapes, model.block_names()) == expected
    assert first_conv_path(shapes["params"]) == expected  # the no-blocks heuristic agrees
    node = shapes["params"]
    for key in expected.split("/"):
        node = node[key]
    assert len(node.shape) == 4 and node.shape[2] == 3  # it reads the image


def test_first_conv_kernel_of_cbr_tiny():
    model = build_model("cbr_tiny", 10, width=0.125)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    kernel = first_conv_kernel(variables, model.block_names())
    assert kernel.shape == (5, 5, 3, 8)
    np.testing.assert_array_equal(kernel, variables["params"]["block1"]["conv"]["kernel"])
    with pytest.raises(ValueError, match="no 4-D conv kernel"):
        first_conv_path({"head": {"kernel": np.ones((3, 2))}})


def tiles(grid: np.ndarray, kh: int, kw: int, scale: int, count: int) -> list[np.ndarray]:
    step_h, step_w = (kh + 1) * scale, (kw + 1) * scale
    cols = (grid.shape[1] + scale) // step_w
    return [grid[(i // cols) * step_h:(i // cols) * step_h + kh * scale,
                 (i % cols) * step_w:(i % cols) * step_w + kw * scale] for i in range(count)]


def test_grid_geometry_and_per_filter_minmax():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 5, 3, 10)) * np.arange(1, 11)  # very different scales
    grid = filter_grid(kernel, tile_pixels=20)
    scale = 4  # ceil(20 / 5)
    assert grid.shape == ((3 * 6 - 1) * scale, (4 * 6 - 1) * scale, 3)  # 3 rows of 4
    assert grid.dtype == np.float32 and grid.min() >= 0 and grid.max() <= 1
    for i, tile in enumerate(tiles(grid, 5, 5, scale, 10)):
        assert tile.min() == 0 and tile.max() == pytest.approx(1)
        np.testing.assert_allclose(tile[::scale, ::scale], (kernel[..., i] - kernel[..., i].min())
                                   / np.ptp(kernel[..., i]), atol=1e-6)  # RGB kept, in place
    assert grid[5 * scale, 0, 0] == 1.0  # white gap row
    assert filter_grid(kernel, max_filters=4).shape[:2] == filter_grid(kernel[..., :4]).shape[:2]


def test_grey_for_one_or_many_input_channels_and_symmetric_mode():
    rng = np.random.default_rng(1)
    for cin in (1, 8):
        kernel = rng.normal(size=(3, 3, cin, 4))
        grid = filter_grid(kernel, tile_pixels=3)  # scale 1
        assert grid.shape == (7, 7, 3)  # 2 x 2 tiles
        np.testing.assert_array_equal(grid[..., 0], grid[..., 1])
        np.testing.assert_array_equal(grid[..., 0], grid[..., 2])
        mean = kernel[..., 0].mean(-1)
        np.testing.assert_allclose(grid[:3, :3, 0], (mean - mean.min()) / np.ptp(mean),
                                   atol=1e-6)
    kernel = np.zeros((3, 3, 3, 2))
    kernel[0, 0, 0, 0], kernel[1, 1, 1, 0] = 2.0, -1.0
    kernel[..., 1] = 0.3  # constant filter
    grid = filter_grid(kernel, normalise="symmetric", tile_pixels=3)
    assert grid[0, 0, 0] == 1.0 and grid[1, 1, 1] == 0.25 and grid[2, 2, 2] == 0.5
    np.testing.assert_array_equal(filter_grid(kernel, tile_pixels=3)[:3, 4:], 0.5)
    chosen = filter_grid(kernel, indices=[1], tile_pixels=3)
    assert chosen.shape == (3, 3, 3) and np.all(chosen == 0.5)


def test_plot_filter_grids_writes_png(tmp_path):
    rng = np.random.default_rng(2)
    kernels = {"random": rng.normal(size=(7, 7, 3, 16)),
               "pretrained": rng.normal(size=(7, 7, 3, 16))}
    path = plot_filter_grids(kernels, tmp_path / "grids.png", title="conv1")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "grids.png").stat().st_size > 1000
