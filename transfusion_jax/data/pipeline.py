"""grain input pipelines: seeded, per-process sharded, checkpointable.

The train stream is a pure function of (seed, position): examples are shuffled afresh each
epoch (`MapDataset.shuffle` before `repeat`), augmented with a per-example seed, and cut
into per-process batches. Process ``p`` of ``P`` takes local batch ``s * P + p`` for global
step ``s``, i.e. the contiguous rows ``[p * B/P, (p+1) * B/P)`` of global batch ``s``, so a
run gives the same global batches on any number of processes. The iterator's state
(``{"next_index": k}``) is saved with each checkpoint and restored on resume.

A training split that fits in ``data.in_memory_mb`` and is not augmented is held in memory
and batched by gathering (`in_memory`): the same batches, about 13x faster to produce
(one reader thread, `benchmarks/in_memory_batches.py`).

Eval batches cover the split exactly once, padded to whole global batches with a ``mask``;
an eval split that fits in ``data.in_memory_mb`` is read once per process and sliced (the
same batches: an evaluation every few steps no longer reads and decodes the split again).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from transfusion_jax.data import in_memory
from transfusion_jax.data.errors import DataError
from transfusion_jax.data.preprocess import make_augment, make_preprocess


def _process_layout(global_batch_size: int) -> tuple[int, int, int]:
    """``(local_batch_size, process_index, process_count)``."""
    count = jax.process_count()
    if global_batch_size % count:
        raise ValueError(f"batch size {global_batch_size} must be divisible by the "
                         f"{count} processes")
    return global_batch_size // count, jax.process_index(), count


class _Subset:
    """A random-access view of ``source`` at fixed ``indices``."""

    def __init__(self, source: Any, indices: np.ndarray):
        self._source, self._indices = source, indices
        key = getattr(source, "cache_key", None)
        self.cache_key = None if key is None else (key, indices.tobytes())

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Any:
        return self._source[int(self._indices[index])]


def subset(source: Any, num_examples: int | None, seed: int) -> Any:
    """The whole source, or a fixed seeded random subset of ``num_examples`` (small data).

    The subset is an explicit index map: slicing a shuffled grain dataset and repeating it
    would draw later epochs from outside the subset.
    """
    if not num_examples:
        return source
    if num_examples > len(source):
        raise DataError(f"asked for {num_examples} training examples but the split has "
                         f"only {len(source)}")
    indices = np.sort(np.random.default_rng(seed).permutation(len(source))[:num_examples])
    return _Subset(source, indices)


def train_dataset(source: Any, data_config: Any, global_batch_size: int,
                  seed: int) -> grain.MapDataset:
    """Infinite dataset of this process's train batches, indexable by local batch number.

    Returns:
      A `grain.MapDataset` whose item ``k`` is ``{"image": float32 (b, s, s, c),
      "label": (b,) int or (b, k) float32}`` with ``b = global_batch_size / process_count``.
    """
    local, index, count = _process_layout(global_batch_size)
    preprocess = make_preprocess(data_config)  # checks the options on both paths
    source = subset(source, data_config.train_examples, seed=data_config.subset_seed)
    if in_memory.fits(source, data_config):
        return in_memory.train_batches(source, data_config, local, seed)[index::count]
    ds = grain.MapDataset.source(source)
    ds = ds.seed(seed).shuffle().repeat(None).map(preprocess)
    if data_config.augment.crop_padding or data_config.augment.flip:
        ds = ds.random_map(make_augment(data_config), seed=seed + 2)
    return ds.batch(local, drop_remainder=True)[index::count]


def train_iterator(dataset: grain.MapDataset, num_threads: int,
                   state: dict[str, Any] | None = None) -> grain.DatasetIterator:
    """A prefetching iterator over `train_dataset`, optionally restored to ``state``."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    iterator = iter(dataset.to_iter_dataset(options))
    if state is not None:
        iterator.set_state(state)
    return iterator


def eval_batches(source: Any, data_config: Any, global_batch_size: int,
                 num_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of every eval batch, padded, with a ``mask`` (1 = real example).

    Yields:
      ``{"image": float32 (b, s, s, c), "label": ..., "mask": float32 (b,)}``.
    """
    local, index, count = _process_layout(global_batch_size)
    if in_memory.fits(source, data_config, training=False):
        yield from in_memory.eval_batches(source, data_config, local, index, count)
        return
    n = len(source)
    total = math.ceil(n / global_batch_size) * global_batch_size
    base = grain.MapDataset.source(source).map(make_preprocess(data_config))
    blank = jax.tree.map(np.zeros_like, base[0])

    def get(i: int) -> dict[str, Any]:
        record = base[int(i)] if i < n else blank
        return {**record, "mask": np.float32(i < n)}

    ds = grain.MapDataset.range(total).map(get).batch(local)[index::count]
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    yield from ds.to_iter_dataset(options)


def first_examples(source: Any, data_config: Any, num_examples: int = 0,
                   num_threads: int = 4) -> dict[str, np.ndarray]:
    """The first ``num_examples`` of a split (0 = all), preprocessed as for evaluation.

    The same arrays on every process (nothing is sharded): a fixed evaluation subset.

    Returns:
      ``{"image": float32 (n, s, s, c), "label": (n,) or (n, k)}``.
    """
    n = min(num_examples or len(source), len(source))
    if n == 0:
        raise DataError("the split is empty")
    if in_memory.fits(source, data_config, training=False):
        return in_memory.first_examples(source, data_config, n)
    ds = grain.MapDataset.source(source)[:n].map(make_preprocess(data_config)).batch(256)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    batches = list(ds.to_iter_dataset(options))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
