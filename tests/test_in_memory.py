"""In-memory train and eval batches: bit-identical to the per-example grain pipeline's;
train batches resumable."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from tests.test_pipeline import digits
from transfusion_jax.data import in_memory, open_source, train_dataset, train_iterator
from transfusion_jax.data.pipeline import eval_batches, first_examples, subset


def both_paths(data_dir, batch, seed, **kw):
    """The same config's train dataset through the in-memory and the per-example path."""
    fast, slow = digits(data_dir, **kw), digits(data_dir, in_memory_mb=0, **kw)
    src, _ = open_source(fast, "train")
    assert in_memory.fits(subset(src, fast.train_examples, fast.subset_seed), fast)
    assert not in_memory.fits(src, slow)
    return train_dataset(src, fast, batch, seed), train_dataset(src, slow, batch, seed)


@pytest.mark.parametrize("kw", [
    {},  # 8x8 grey, as stored
    {"image_size": 12, "channels": 3, "normalize": "imagenet"},  # resized, per-channel
    {"train_examples": 50, "subset_seed": 3},  # a subset: epochs of 50, batches across them
])
def test_batches_equal_the_per_example_pipeline(data_dir, kw):
    fast, slow = both_paths(data_dir, 16, seed=5, **kw)
    assert isinstance(fast, grain.MapDataset)
    for k in (0, 1, 7, 40, 113, 10_000):  # epoch boundaries inside batches, far epochs
        a, b = fast[k], slow[k]
        assert a["image"].dtype == b["image"].dtype == np.float32
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("kw", [{}, {"image_size": 12, "channels": 3, "normalize": "imagenet"}])
def test_eval_batches_and_first_examples_equal_the_per_example_pipeline(data_dir, kw):
    fast, slow = digits(data_dir, **kw), digits(data_dir, in_memory_mb=0, **kw)
    src, _ = open_source(fast, "test")
    assert in_memory.fits(src, fast, training=False) and len(src) % 64  # padded last batch
    flipped = digits(data_dir, augment={"crop_padding": 0, "flip": True}, **kw)
    assert in_memory.fits(src, flipped, training=False)  # evaluation is never augmented
    a, b = list(eval_batches(src, fast, 64)), list(eval_batches(src, slow, 64))
    assert len(a) == len(b) == -(-len(src) // 64)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() == {"image", "label", "mask"}
        for key in x:
            assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, key
            np.testing.assert_array_equal(x[key], y[key])
    assert a[-1]["mask"].sum() == len(src) % 64
    for n in (1, 100):
        x, y = first_examples(src, fast, n), first_examples(src, slow, n)
        for key in ("image", "label"):
            assert x[key].dtype == y[key].dtype and x[key].shape[0] == n
            np.testing.assert_array_equal(x[key], y[key])


def test_iterator_and_its_state_equal_the_per_example_pipeline(data_dir):
    fast, slow = both_paths(data_dir, 32, seed=2)
    it_fast, it_slow = train_iterator(fast, 2), train_iterator(slow, 2)
    for _ in range(4):
        np.testing.assert_array_equal(next(it_fast)["image"], next(it_slow)["image"])
    state = it_fast.get_state()
    assert state == it_slow.get_state()
    resumed = train_iterator(both_paths(data_dir, 32, seed=2)[0], 2, state=state)
    for _ in range(3):
        np.testing.assert_array_equal(next(resumed)["image"], next(it_slow)["image"])


def test_epoch_permutation_is_graines_shuffle():
    n, seed = 37, 11
    shuffled = grain.MapDataset.range(n).seed(seed).shuffle()
    for epoch in (0, 1, 5):
        perm = in_memory.epoch_permutation(n, seed, epoch)
        assert sorted(perm) == list(range(n))
        assert list(perm) == [shuffled[epoch * n + i] % n for i in range(n)]
    assert list(in_memory.epoch_permutation(n, seed, 0)) != list(
        in_memory.epoch_permutation(n, seed, 1))


def test_what_does_not_fit_or_augments_uses_the_per_example_path(data_dir):
    c = digits(data_dir)
    src, _ = open_source(c, "train")
    assert in_memory.fits(src, c)
    c.in_memory_mb = len(src) * 8 * 8 / 2 ** 20 * 0.99  # one percent too small
    assert not in_memory.fits(src, c)
    flip = digits(data_dir, augment={"crop_padding": 0, "flip": True})
    assert not in_memory.fits(src, flip)


def test_a_split_is_read_once_per_process(data_dir):
    c = digits(data_dir)
    first, _ = open_source(c, "train")
    again, _ = open_source(c, "train")  # a new source object, as each run of a sweep opens
    images, labels = in_memory.load(first, c)
    assert in_memory.load(again, c)[0] is images
    assert images.dtype == np.uint8 and images.shape == (len(first), 8, 8, 1)
    assert labels.shape == (len(first),)
    c.channels = 3
    assert in_memory.load(again, c)[0].shape == (len(first), 8, 8, 3)


def test_the_kept_splits_stay_within_the_limit(data_dir):
    c = digits(data_dir)
    src, _ = open_source(c, "train")
    one = in_memory.load(src, c)[0]
    c.channels = 3  # a second entry, three times the first
    in_memory.load(src, c)
    c.in_memory_mb = 4 * one.nbytes / 2 ** 20  # room for the newest, not with another
    c.image_size = 9
    in_memory.load(src, c)  # 3 x 81/64 of the first: the two older ones go
    kept = [images.nbytes for images, _ in in_memory._CACHE.values()]
    assert len(kept) == 1 and sum(kept) <= c.in_memory_mb * 2 ** 20
