"""Maximal activation images: the streamed top-k equals a full sort, padding is ignored,
overlap / purity / dead channels mean what they say, and the files are written."""

from __future__ import annotations

import csv
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import smoke_config
from transfusion_jax.analysis.max_activation import max_activation_topk, stacked_maps_forward
from transfusion_jax.analysis.max_activation_compare import (
    class_entropy,
    compare_topk,
    largest_finite_k,
)
from transfusion_jax.analysis.max_activation_plots import (
    CHANNEL_COLUMNS,
    plot_max_activation,
    write_max_activation,
)
from transfusion_jax.data import eval_batches, open_source
from transfusion_jax.train.setup import build_run


def table_batches(n: int, batch: int, labels: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Batches whose "image" is the example's index (padding rows point at row ``n``)."""
    out = []
    for start in range(0, -(-n // batch) * batch, batch):
        ids = np.arange(start, start + batch)
        real = ids < n
        out.append({"image": np.where(real, ids, n)[:, None].astype(np.float32),
                    "label": np.where(real, labels[np.minimum(ids, n - 1)], 0),
                    "mask": real.astype(np.float32)})
    return out


def table_forward(variables, images):
    """Looks every example's maps up in ``variables`` (``(C, n + 1, ...)`` tables)."""
    rows = images[:, 0].astype(jnp.int32)
    return {name: table[:, rows] for name, table in variables.items()}


def test_streamed_topk_equals_a_full_sort():
    rng = np.random.default_rng(0)
    num_c, n, channels, k, classes = 2, 90, 6, 40, 4
    # Distinct integer values, about half negative: positive scores never tie, the zeros that
    # ReLU makes of the rest tie and go to the lower index, as in a stable sort.
    values = (rng.permutation(num_c * n * channels) - num_c * n * channels // 2).astype(
        np.float32).reshape(num_c, n, channels)
    conv = np.zeros((num_c, n + 1, 2, 2, channels), np.float32)
    conv[:, :n, 0, 0] = 2 * values  # mean over h, w of ReLU = relu(values) / 2
    conv[:, :n, 0, 1] = -5  # negative: ReLU before the mean drops it
    conv[:, n] = 1e6  # the padding rows' maps: must never be ranked
    dense = np.concatenate([values[:, ::-1], np.full((num_c, 1, channels), 1e6)], 1)
    labels = rng.integers(0, classes, n)
    batches = table_batches(n, 32, labels)  # 3 batches, the last one padded
    results = max_activation_topk(table_forward, {"conv": conv, "dense": dense}, batches,
                                  layers=["conv", "dense"], k=k, num_classes=classes)
    for name, scores in (("conv", np.maximum(values, 0) / 2),
                         ("dense", np.maximum(values[:, ::-1], 0))):
        r = results[name]
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k].transpose(0, 2, 1)
        np.testing.assert_array_equal(r.indices, order)
        np.testing.assert_array_equal(r.scores, np.take_along_axis(
            scores.transpose(0, 2, 1), order, axis=-1))
        positive = (scores > 0).astype(np.int64)
        np.testing.assert_array_equal(r.num_positive, positive.sum(1))
        np.testing.assert_array_equal(r.co_positive, np.einsum("abk,cbk->ack", positive,
                                                               positive))
        np.testing.assert_array_equal(r.positive_hist,
                                      np.einsum("cbk,bm->ckm", positive, np.eye(classes)[labels]))
        np.testing.assert_array_equal(r.labels, labels)
        np.testing.assert_array_equal(r.top_labels, labels[order])
        assert r.k == k and r.num_examples == n


def test_purity_entropy_and_dead_channels():
    entropy, purity = class_entropy(np.array([[0, 7, 0, 0], [5, 5, 5, 5], [0, 0, 0, 0]]))
    np.testing.assert_allclose(entropy[:2], [0, np.log(4)], atol=1e-12)
    np.testing.assert_allclose(purity[:2], [1, 0], atol=1e-12)
    assert np.isnan(entropy[2]) and np.isnan(purity[2])

    n, classes = 100, 10
    labels = np.arange(n) % classes
    index = np.arange(n, dtype=np.float32)
    pure = np.where(labels == 3, 1 + index, -1 - index)  # positive on class 3 only
    table = np.stack([pure, index + 1, -1 - index], axis=-1)  # uniform; dead
    table = np.concatenate([table, np.zeros((1, 3), np.float32)])[None].repeat(2, 0)
    result = max_activation_topk(table_forward, {"d": table}, table_batches(n, 25, labels),
                                 layers=["d"], k=100, num_classes=classes)["d"]
    comp = compare_topk(result, [10, 100, "all"], a=0, b=1)
    np.testing.assert_allclose(comp.purity_after["10"][:2], [1, 0], atol=1e-12)
    np.testing.assert_allclose(comp.purity_before["100"][:2], [1, 0], atol=1e-12)
    np.testing.assert_allclose(comp.entropy_after["100"][1], np.log(classes), atol=1e-12)
    np.testing.assert_allclose(comp.purity_after["all"][:2], [1, 0], atol=1e-12)
    np.testing.assert_array_equal(comp.size_before["100"], [10, 100, 0])  # positives only
    assert comp.overlap["100"][0] == 1 and comp.overlap["all"][1] == 1
    assert list(comp.dead_before) == [False, False, True] == list(comp.dead_after)
    assert np.isnan(comp.overlap["10"][2]) and np.isnan(comp.purity_after["all"][2])
    row = comp.summary()[1]
    assert row["k"] == "100" and row["dead_after"] == 1 and row["mean_overlap"] == 1


def test_k_beyond_the_data_clamps(caplog):
    n, labels = 20, np.arange(20) % 3
    table = np.arange(2 * (n + 1) * 4, dtype=np.float32).reshape(2, n + 1, 4)
    with caplog.at_level(logging.WARNING):
        result = max_activation_topk(table_forward, {"d": table}, table_batches(n, 8, labels),
                                     layers=["d"], k=largest_finite_k([5, 1000, "all"]),
                                     num_classes=3)["d"]
    assert result.k == n and result.indices.shape == (2, 4, n)
    assert "clamped to k=20" in caplog.text
    assert compare_topk(result, [1000]).k_used == {"1000": n}
    cut = max_activation_topk(table_forward, {"d": table}, table_batches(n, 8, labels),
                              layers=["d"], k=5, num_classes=3, num_examples=11)["d"]
    assert cut.num_examples == 11 and cut.indices.max() == 10
    with pytest.raises(ValueError, match=r"layers \['x'\] are not outputs"):
        max_activation_topk(table_forward, {"d": table}, table_batches(n, 8, labels),
                            layers=["x"], k=5, num_classes=3)


@pytest.fixture(scope="module")
def real(data_dir):
    """A random-init slim CBR-Tiny stacked with a perturbed copy whose block2 channel 3 is
    dead (BatchNorm scale 0, bias -1), over 50 test images in padded batches of 32."""
    config = smoke_config(data_dir)
    model = build_run(config).model
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
        jnp.zeros((1, 28, 28, 1)))
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    after = jax.tree.unflatten(treedef, [x + 0.3 * x.std() * jax.random.normal(kk, x.shape)
                                         for x, kk in zip(leaves, keys, strict=True)])
    bn = after["params"]["block2"]["bn"]
    bn["scale"], bn["bias"] = bn["scale"].at[3].set(0), bn["bias"].at[3].set(-1)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), variables, after)
    source, meta = open_source(config.data, "test[:50]")
    layers = ["block1", "block2", "pre_logits"]
    batches = list(eval_batches(source, config.data, 32, num_threads=1))
    results = max_activation_topk(stacked_maps_forward(model, layers), stacked, batches,
                                  layers=layers, k=20, num_classes=meta.num_classes)
    images = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
    reference = {}
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[1])
    for v in (variables, after):  # the plain per-checkpoint forward, all images at once
        out = apply(v, jnp.asarray(images))
        for name in layers:
            x = np.maximum(np.asarray(out[name]), 0)
            reference.setdefault(name, []).append(x.mean((1, 2)) if x.ndim == 4 else x)
    return results, {k: np.stack(v) for k, v in reference.items()}, source, batches


def test_real_model_matches_a_per_checkpoint_forward(real):
    results, reference, source, batches = real
    assert sum(len(b["mask"]) for b in batches) == 64  # 14 padding rows
    for name, ref in reference.items():  # ref: (C, n, channels)
        r = results[name]
        assert r.num_examples == 50 and r.indices.max() < 50
        at_indices = np.take_along_axis(ref.transpose(0, 2, 1), r.indices, axis=-1)
        np.testing.assert_allclose(r.scores, at_indices, rtol=1e-5, atol=1e-6)
        top = -np.sort(-ref, axis=1)[:, :20].transpose(0, 2, 1)
        np.testing.assert_allclose(r.scores, top, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(r.num_positive, (ref > 0).sum(1))
        np.testing.assert_array_equal(r.labels, [source[i]["label"] for i in range(50)])


def test_identical_checkpoints_and_a_dead_channel(real):
    results = real[0]
    same = compare_topk(results["block2"], [10, "all"], a=1, b=1)
    live = ~same.dead_before
    assert not live[3] and live.sum() == len(live) - 1
    for key in ("10", "all"):
        np.testing.assert_array_equal(same.overlap[key][live], 1)
        np.testing.assert_array_equal(same.purity_before[key], same.purity_after[key])
    comp = compare_topk(results["block2"], [10, "all"])
    assert comp.dead_after[3] and not comp.dead_before[3] and comp.dead_after.sum() == 1
    assert comp.overlap["10"][3] == 0 and np.isnan(comp.purity_after["10"][3])
    assert comp.summary()[0]["dead_after"] == 1


def test_files_and_figures(real, tmp_path):
    results, _, source, _ = real
    ks = [10, "all"]
    comparisons = [compare_topk(r, ks) for r in results.values()]
    files = write_max_activation(tmp_path, comparisons, results)
    rows = list(csv.DictReader(open(files["channels"])))
    assert tuple(rows[0]) == CHANNEL_COLUMNS
    assert len(rows) == 2 * sum(r.scores.shape[1] for r in results.values())
    dead = [r for r in rows if r["dead_after"] == "1"]
    assert [(r["layer"], r["channel"]) for r in dead] == [("block2", "3")] * 2
    layers = list(csv.DictReader(open(files["layers"])))
    assert [(r["layer"], r["k"]) for r in layers][:2] == [("block1", "10"), ("block1", "all")]
    assert np.load(files["topk"])["block2/indices"].shape == results["block2"].indices.shape
    figures = plot_max_activation(tmp_path, comparisons, results, source, k="10",
                                  channels_shown=2, images_shown=3)
    assert set(figures) == {"scatter", "layers_plot", "images_block1", "images_block2",
                            "images_pre_logits"}
    for path in figures.values():
        assert (tmp_path / path).stat().st_size > 5000
