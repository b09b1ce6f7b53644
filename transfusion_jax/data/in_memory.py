"""Train and eval batches gathered from a split held in memory: the same batches, without a
per-example pipeline.

The per-example train pipeline (`pipeline.train_dataset`) reads, decodes and preprocesses
every example through grain one at a time: about 300 us per 28x28 MNIST image on one core
(150 of them tfds's record decoding), so one process feeds about 2,000-3,000 images/s
however many threads it is given. That is a CPU run's background cost, but it starves an
accelerator: on a GPU a sweep of small runs trained no faster together than one after
another, every path bound by the input pipeline.

When a split's images, at the training size, fit in ``data.in_memory_mb``, and training
uses no random augmentation, `train_batches` reads the split once (cached per process, so
the runs of a sweep share it), keeps the images as uint8 ``(n, s, s, c)`` after the
deterministic part of `preprocess.make_preprocess` (channels and resize), and builds batch
``k`` as one gather of the indices that grain's ``seed(seed).shuffle().repeat(None)
.batch(b)`` would have read, then one normalisation. The batches are bit-identical to the
per-example pipeline's (tests/test_in_memory.py), so results, checkpoints and iterator states
do not depend on which path ran. An eval split that fits is held the same way
(`eval_batches`, `first_examples`: the per-example pipeline's padded batches and first
examples, read once per process instead of at every evaluation).
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from transfusion_jax.data.preprocess import fixed_size, normalize

log = logging.getLogger(__name__)

# Loaded splits kept per process, newest last: (key, channels, size) -> (images, labels);
# older ones are dropped while all together exceed ``data.in_memory_mb``.
_CACHE: collections.OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = (
    collections.OrderedDict())
_LOCK = threading.Lock()


def fits(source: Any, data_config: Any, *, training: bool = True) -> bool:
    """Whether ``source``'s images at the training size fit in ``data.in_memory_mb`` and,
    for ``training``, training uses no random augmentation (whose per-example seeds only the
    per-example pipeline reproduces; evaluation is never augmented)."""
    limit_mb = data_config.get("in_memory_mb", 0)
    augment = data_config.augment
    if not limit_mb or (training and (augment.crop_padding or augment.flip)):
        return False
    size = len(source) * data_config.image_size ** 2 * data_config.channels
    return size <= limit_mb * 2 ** 20


def load(source: Any, data_config: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every example of ``source`` after channel conversion and resize.

    A source with a ``cache_key`` attribute (tfds splits and their subsets) is read once per
    process for each (channels, image size); later calls return the same arrays. The
    splits kept take at most ``data.in_memory_mb`` together (the newest is always kept).

    Returns:
      ``(images, labels)``: uint8 ``(n, s, s, c)`` and ``(n,)`` int or ``(n, k)`` float32.
    """
    key = getattr(source, "cache_key", None)
    key = None if key is None else (key, data_config.channels, data_config.image_size)
    with _LOCK:  # held while reading, so runs training side by side read a split once
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        records = [source[i] for i in range(len(source))]
        images = np.stack([fixed_size(r["image"], data_config) for r in records])
        labels = np.stack([np.asarray(r["label"]) for r in records])
        log.info("holding %d images in memory (%.1f MB)", len(images), images.nbytes / 2 ** 20)
        if key is not None:
            _CACHE[key] = (images, labels)
            limit = data_config.in_memory_mb * 2 ** 20
            while len(_CACHE) > 1 and sum(i.nbytes for i, _ in _CACHE.values()) > limit:
                _CACHE.popitem(last=False)
    return images, labels


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which grain's ``MapDataset.range(n).seed(seed).shuffle()`` visits the
    examples of ``epoch`` (0-based): positions ``epoch * n + i`` read example ``perm[i]``.

    Computed once per epoch from grain's own index shuffle (the ``shuffle`` dataset's
    ``__getitem__`` over the epoch's positions); about 25 us per example.

    Returns:
      int64 ``(n,)``, a permutation of ``range(n)``.
    """
    shuffled = grain.MapDataset.range(num_examples).seed(seed).shuffle()
    start = epoch * num_examples  # a range dataset reads position p as p mod n
    return np.fromiter((shuffled[start + i] for i in range(num_examples)), np.int64,
                       num_examples)


class ShuffledBatches:
    """A grain source whose item ``k`` is batch ``k`` of the per-example pipeline's stream:
    ``seed(seed).shuffle().repeat(None)`` over the held examples, cut into batches of
    ``batch_size`` (``drop_remainder``), preprocessed.

    Items: ``{"image": float32 (batch_size, s, s, c), "label": (batch_size,) or
    (batch_size, k)}``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                 normalization: str):
        self._images, self._labels = images, labels
        self._batch, self._seed, self._normalization = batch_size, seed, normalization
        self._epochs: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize // self._batch

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._epochs:
                self._epochs[epoch] = epoch_permutation(len(self._images), self._seed, epoch)
                for old in [e for e in self._epochs if e < epoch - 1]:
                    del self._epochs[old]
            return self._epochs[epoch]

    def indices(self, k: int) -> np.ndarray:
        """The example indices of batch ``k``: int64 ``(batch_size,)``."""
        n = len(self._images)
        positions = k * self._batch + np.arange(self._batch)
        epochs, within = np.divmod(positions, n)
        out = np.empty(self._batch, np.int64)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            out[rows] = self._permutation(int(epoch))[within[rows]]
        return out

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        rows = self.indices(int(k))
        return {"image": normalize(self._images[rows], self._normalization),
                "label": self._labels[rows]}


def train_batches(source: Any, data_config: Any, local_batch_size: int,
                  seed: int) -> grain.MapDataset:
    """The in-memory counterpart of the per-example ``train_dataset`` before its per-process
    slice: item ``k`` is local batch ``k`` (see `ShuffledBatches`)."""
    images, labels = load(source, data_config)
    return grain.MapDataset.source(ShuffledBatches(images, labels, local_batch_size, seed,
                                                   data_config.normalize))


def eval_batches(source: Any, data_config: Any, local_batch_size: int, index: int,
                 count: int) -> Iterator[dict[str, np.ndarray]]:
    """The in-memory counterpart of `pipeline.eval_batches`: local batches ``index``,
    ``index + count``, ... of the split in order, padded to whole global batches (padding
    rows all zeros, ``mask`` 0), bit-identical to the per-example pipeline's.

    Yields:
      ``{"image": float32 (b, s, s, c), "label": ..., "mask": float32 (b,)}``.
    """
    images, labels = load(source, data_config)
    n, global_batch = len(images), local_batch_size * count
    total = -(-n // global_batch) * global_batch
    for k in range(index, total // local_batch_size, count):
        positions = k * local_batch_size + np.arange(local_batch_size)
        real = positions < n
        rows = np.minimum(positions, n - 1)
        image = normalize(images[rows], data_config.normalize)
        label = labels[rows].copy()
        image[~real], label[~real] = 0, 0
        yield {"image": image, "label": label, "mask": real.astype(np.float32)}


def first_examples(source: Any, data_config: Any, num_examples: int) -> dict[str, np.ndarray]:
    """The in-memory counterpart of `pipeline.first_examples`: ``{"image": float32
    (num_examples, s, s, c), "label": ...}``."""
    images, labels = load(source, data_config)
    return {"image": normalize(images[:num_examples], data_config.normalize),
            "label": labels[:num_examples].copy()}
