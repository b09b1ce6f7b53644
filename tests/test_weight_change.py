"""Parameter-space change: exact values on constructed trees, the vectorised statistics
against float64 loops, the trajectory form against pairwise calls, and the written files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from transfusion_jax.analysis.weight_change import (
    layer_changes,
    ordered_leaves,
    top_changed_filters,
    trajectory_changes,
)
from transfusion_jax.analysis.weight_change_plots import write_weight_change


def make_params(seed: int = 0, classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.normal(size=shape).astype(np.float32)

    return {"head": {"kernel": normal(16, classes), "bias": normal(classes)},
            "block1": {"conv": {"kernel": normal(3, 3, 8, 16)},
                       "bn": {"scale": normal(16), "bias": normal(16)}},
            "stem": {"conv": {"kernel": normal(3, 3, 3, 8)}}}


def scaled(params: dict, factor: float) -> dict:
    return {k: scaled(v, factor) if isinstance(v, dict) else v * factor
            for k, v in params.items()}


def test_identical_trees_have_no_change():
    params = make_params()
    result = layer_changes(params, params)
    assert [c.path for c in result.layers] == ["stem/conv/kernel", "block1/conv/kernel",
                                               "head/kernel"]
    assert result.skipped == []
    for c in result.layers:
        assert c.norm_change == 0 and c.relative_change == 0 and c.correlation == 1
        np.testing.assert_array_equal(c.filter_correlation, 1.0)
        np.testing.assert_array_equal(c.filter_relative_change, 0.0)
        assert c.filter_correlation.shape == (c.shape[-1],)


def test_doubling_is_relative_change_one_and_correlation_one():
    params = make_params()
    result = layer_changes(params, scaled(params, 2.0))
    for c in result.layers:
        assert c.relative_change == pytest.approx(1.0, rel=1e-6)
        assert c.norm_after == pytest.approx(2 * c.norm_before, rel=1e-6)
        assert c.correlation == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(c.filter_correlation, 1.0, atol=1e-6)
        np.testing.assert_allclose(c.filter_relative_change, 1.0, rtol=1e-6)


def test_noisy_filter_tops_the_ranking():
    before = make_params()
    after = scaled(before, 1.01)
    after["block1"]["conv"]["kernel"][..., 5] += np.random.default_rng(1).normal(
        size=(3, 3, 8)).astype(np.float32)
    result = layer_changes(before, after)
    top = top_changed_filters(result, 3)
    assert (top[0].path, top[0].index) == ("block1/conv/kernel", 5)
    assert top[0].relative_change > 10 * top[1].relative_change
    lowest = top_changed_filters(result, 1, by="correlation")[0]
    assert (lowest.path, lowest.index) == ("block1/conv/kernel", 5)
    assert len(top_changed_filters(result, 10_000)) == 8 + 16 + 10


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_filter_statistics_match_float64_loops(dtype):
    before = make_params(0)
    after = make_params(1)
    after = {k: {n: v if not isinstance(v, np.ndarray) else before[k][n] * 0.5 + v
                 for n, v in sub.items()} for k, sub in after.items()}
    if dtype == "float64":
        before, after = scaled(before, np.float64(1)), scaled(after, np.float64(1))
    tol = 1e-12  # computed in float64 whatever the input dtype
    for c in layer_changes(before, after).layers:
        w0 = dict(ordered_leaves(before))[c.path].astype(np.float64).reshape(-1, c.shape[-1])
        w1 = dict(ordered_leaves(after))[c.path].astype(np.float64).reshape(-1, c.shape[-1])
        for j in range(w0.shape[1]):
            assert c.filter_correlation[j] == pytest.approx(
                np.corrcoef(w0[:, j], w1[:, j])[0, 1], abs=tol)
            assert c.filter_relative_change[j] == pytest.approx(
                np.abs(w1[:, j] - w0[:, j]).mean() / np.abs(w0[:, j]).mean(), rel=tol)
        assert c.relative_change == pytest.approx(
            np.linalg.norm(w1 - w0) / np.linalg.norm(w0), rel=tol)
        assert c.correlation == pytest.approx(np.corrcoef(w0.ravel(), w1.ravel())[0, 1],
                                              abs=tol)


def test_constant_filters_give_documented_values_not_nan():
    before, after = make_params(), make_params()
    kb, ka = before["stem"]["conv"]["kernel"], after["stem"]["conv"]["kernel"]
    kb[..., 0] = ka[..., 0] = 0.1  # identical constants -> 1
    kb[..., 1], ka[..., 1] = 0.1, 0.3  # different constants -> 0
    kb[..., 2] = 0.7  # constant before, varying after -> 0
    kb[..., 3] = ka[..., 3] = 0.0  # zero, unchanged: relative change 0
    kb[..., 4] = 0.0  # zero before, changed: relative change inf
    c = layer_changes(before, after).layers[0]
    assert c.path == "stem/conv/kernel"
    np.testing.assert_array_equal(c.filter_correlation[:5], [1.0, 0.0, 0.0, 1.0, 0.0])
    assert c.filter_relative_change[3] == 0 and c.filter_relative_change[4] == np.inf
    assert not np.isnan(c.filter_correlation).any()
    assert not np.isnan(c.filter_relative_change).any()
    assert top_changed_filters(layer_changes(before, after), 1)[0].index == 4


def test_mismatched_parameters_are_skipped_and_listed():
    before, after = make_params(classes=10), make_params(classes=5)
    before["stem"]["extra"] = {"kernel": np.ones((2, 2), np.float32)}
    after["block1"]["new"] = {"kernel": np.ones((2, 2), np.float32)}
    result = layer_changes(before, after)
    assert [c.path for c in result.layers] == ["stem/conv/kernel", "block1/conv/kernel"]
    assert dict(result.skipped) == {"head/kernel": "shape (16, 10) vs (16, 5)",
                                    "stem/extra/kernel": "only in before",
                                    "block1/new/kernel": "only in after"}


def test_forward_order_and_optional_vector_rows():
    params = {f"block{i}": {"conv": {"kernel": np.ones((1, 1, 1, 2))}} for i in (10, 2, 1)}
    params["stem"] = {"conv": {"kernel": np.ones((1, 1, 1, 2))}}
    params["aux"] = {"kernel": np.ones((2, 2))}
    paths = [p.split("/")[0] for p, _ in ordered_leaves(params)]
    assert paths == ["stem", "block1", "block2", "block10", "aux"]
    paths = [p.split("/")[0] for p, _ in ordered_leaves(params, ["block10", "block1"])]
    assert paths == ["block10", "block1", "aux", "block2", "stem"]
    result = layer_changes(make_params(0), make_params(1),
                           suffixes=("kernel", "scale", "bias"))
    rows = {c.path: c for c in result.layers}
    assert rows["block1/bn/scale"].filter_correlation.shape == (0,)
    assert np.isfinite(rows["block1/bn/scale"].relative_change)
    assert all(t.path.endswith("kernel") for t in top_changed_filters(result, 100))


def test_trajectory_equals_pairwise_calls():
    checkpoints = [make_params(0)]
    for seed in (1, 2, 3):
        checkpoints.append(scaled(checkpoints[-1], 1.0))
        noise = make_params(seed)
        checkpoints[-1] = {k: {n: (v + 0.1 * seed * noise[k][n]) if isinstance(v, np.ndarray)
                               else v for n, v in sub.items()} for k, sub in
                           checkpoints[-1].items()}
    stacked = {k: {n: (np.stack([c[k][n] for c in checkpoints])
                       if isinstance(v, np.ndarray) else
                       {m: np.stack([c[k][n][m] for c in checkpoints]) for m in v})
                   for n, v in sub.items()} for k, sub in checkpoints[0].items()}
    for reference in (0, 2):
        traj = trajectory_changes({"params": stacked, "batch_stats": {}}, reference,
                                  steps=[0, 10, 20, 30])
        assert traj.relative_change.shape == (4, 3)
        assert traj.layers == ["stem/conv/kernel", "block1/conv/kernel", "head/kernel"]
        for c, params in enumerate(checkpoints):
            pair = layer_changes(checkpoints[reference], params).layers
            np.testing.assert_allclose(traj.relative_change[c],
                                       [p.relative_change for p in pair], rtol=1e-6)
            np.testing.assert_allclose(traj.norm_change[c], [p.norm_change for p in pair],
                                       rtol=1e-6)
            np.testing.assert_allclose(traj.correlation[c], [p.correlation for p in pair],
                                       atol=1e-6)
        assert np.all(traj.relative_change[reference] == 0)
    with pytest.raises(ValueError, match="reference_index"):
        trajectory_changes(stacked, 4)


def test_writer_files(tmp_path):
    before, after = make_params(0), make_params(1)
    result = layer_changes(before, after)
    stacked = {k: {n: np.stack([before[k][n], after[k][n]]) if isinstance(v, np.ndarray)
                   else {m: np.stack([before[k][n][m], after[k][n][m]]) for m in v}
                   for n, v in sub.items()} for k, sub in before.items()}
    written = write_weight_change(result, tmp_path / "out",
                                  trajectory=trajectory_changes(stacked))
    assert set(written) == {"layers_csv", "filters_csv", "layers_png", "correlation_png",
                            "trajectory_png"}
    for path in written.values():
        with open(path, "rb") as f:
            head = f.read(8)
        assert head
        if path.endswith(".png"):
            assert head == b"\x89PNG\r\n\x1a\n"
    with open(written["layers_csv"]) as f:
        layers = list(csv.DictReader(f))
    assert [r["path"] for r in layers] == [c.path for c in result.layers]
    assert float(layers[0]["relative_change"]) == pytest.approx(result.layers[0].relative_change)
    with open(written["filters_csv"]) as f:
        filters = list(csv.DictReader(f))
    assert len(filters) == 8 + 16 + 10
    assert set(filters[0]) == {"path", "filter", "correlation", "relative_change",
                               "mean_abs_before", "mean_abs_change"}
