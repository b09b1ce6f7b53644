"""The one checkpoint-similarity pipeline: named checkpoints x layers, streamed over data.

Every feature-space comparison of the project goes through here: the similarity job (every
checkpoint x layer of one run), the analyze job (before vs after vs baselines, per layer) and
the sweep report (each trained model vs its own initialisation and vs the other inits):

1. `stack_checkpoints` opens the runs (`transfusion_jax.runs`), checks that the checkpoints
   share one architecture and head, and stacks their variables on a leading ``(C,)`` axis;
2. `checkpoint_similarity` maps each batch of the data through all of them in one jitted
   call (`activations`; vmapped on GPU/TPU, `lax.map` on CPU), streams the representations
   into the exact full-data accumulators of `transfusion_jax.similarity.streaming`, and
   reads linear CKA off for the requested pairs of items (and SVCCA for a subset).

Items are (checkpoint, layer) pairs numbered ``c * L + l``; pairs are ``(Q, 2)`` item
indices. `same_layer_pairs`, `plot_pairs` and `all_pairs` build the usual sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from transfusion_jax.analysis.activations import make_stacked_forward, stacked_activation_batches
from transfusion_jax.analysis.similarity_uncertainty import (
    UncertaintyOptions,
    UncertaintyStream,
    cca_warnings,
    log_warnings,
    resampled_pairs,
    summaries,
)
from transfusion_jax.config import ConfigError
from transfusion_jax.data import eval_batches, open_source
from transfusion_jax.models import representation_names
from transfusion_jax.paths import to_path
from transfusion_jax.runs import Run, stack
from transfusion_jax.similarity import all_pairs, intervals, resample, streaming


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint to compare: a label, a run's workdir, a step (None = the newest)."""

    label: str
    run_dir: str | Path
    step: int | None = None


@dataclasses.dataclass
class StackedCheckpoints:
    """Checkpoints of one architecture, stacked.

    Attributes:
      run: the first checkpoint's run (its model and config define the stack).
      labels: one label per checkpoint.
      steps: the step of each checkpoint (resolved: never None).
      variables: ``{"params", "batch_stats"}``, every leaf with a leading ``(C,)`` axis.
    """

    run: Run
    labels: list[str]
    steps: list[int]
    variables: dict[str, Any]

    def checkpoint(self, c: int) -> dict[str, Any]:
        """The variables of checkpoint ``c`` (NumPy)."""
        import jax

        return jax.tree.map(lambda v: v[c], self.variables)


def _architecture(run: Run) -> tuple:
    d = run.config.data
    return (run.config.model.to_dict(), d.image_size, d.channels)


def stack_checkpoints(refs: Sequence[CheckpointRef]) -> StackedCheckpoints:
    """Reads and stacks the model variables of ``refs`` (each run opened once).

    Raises:
      ConfigError: a folder that is not a run, a step that is not one of its checkpoints,
        runs of different architectures or head sizes (they cannot be stacked).
    """
    if not refs:
        raise ConfigError("no checkpoints to compare")
    runs: dict[Path, Run] = {}
    trees, steps = [], []
    first: Run | None = None
    for ref in refs:
        key = to_path(ref.run_dir)
        run = runs.get(key) or runs.setdefault(key, Run.open(key))
        if first is None:
            first = run
        elif _architecture(run) != _architecture(first):
            raise ConfigError(f"{ref.label!r} ({run.workdir}) is not the same architecture as "
                              f"{first.workdir}; only checkpoints of one model can be compared")
        elif run.num_classes != first.num_classes:
            raise ConfigError(f"the runs have heads of different sizes "
                              f"{sorted({run.num_classes, first.num_classes})}; compare runs "
                              "trained on the same label set")
        step = run.latest_step if ref.step is None else ref.step
        trees.append(run.read_variables(step))
        steps.append(step)
    return StackedCheckpoints(first, [r.label for r in refs], steps, stack(trees))


def run_checkpoints(run_dir: str | Path, steps: Sequence[int] = ()) -> StackedCheckpoints:
    """Every kept checkpoint of one run (or ``steps``), labelled ``step S``."""
    run = Run.open(run_dir)
    chosen = sorted(steps) if steps else run.steps
    absent = sorted(set(chosen) - set(run.steps))
    if absent:
        raise ConfigError(f"steps {absent} are not checkpoints of {run.workdir}; it has "
                          f"{run.steps}")
    return stack_checkpoints([CheckpointRef(f"step {s}", run.workdir, s) for s in chosen])


def same_layer_pairs(num_checkpoints: int, num_layers: int) -> np.ndarray:
    """Every checkpoint pair ``c1 <= c2`` of each layer: ``(Q, 2)`` item indices."""
    c1, c2 = np.triu_indices(num_checkpoints)
    layers = np.arange(num_layers)
    first = (c1[:, None] * num_layers + layers).ravel()
    second = (c2[:, None] * num_layers + layers).ravel()
    return np.stack([first, second], axis=1)


def plot_pairs(num_checkpoints: int, num_layers: int) -> np.ndarray:
    """The pairs the similarity job's figures need: every layer pair at the last checkpoint,
    and every checkpoint pair of each layer (which include each checkpoint vs the first)."""
    c_last = num_checkpoints - 1
    pairs = {(c_last * num_layers + a, c_last * num_layers + b)
             for a in range(num_layers) for b in range(a, num_layers)}
    pairs |= {tuple(p) for p in same_layer_pairs(num_checkpoints, num_layers).tolist()}
    return np.array(sorted(pairs))


@dataclasses.dataclass
class CheckpointSimilarity:
    """Similarities of requested (checkpoint, layer) item pairs.

    Attributes:
      labels, steps: per checkpoint (``C``).
      layers: the compared model outputs (``L``).
      pairs: ``(Q, 2)`` item indices ``c * L + l``.
      values: ``{"linear_cka": (Q,), "svcca": (Q,)}``; SVCCA is NaN for pairs not asked.
      num_examples: examples streamed.
      reduction: how conv maps became ``(n, d)``.
      intervals: per measure, an `intervals.Summary` over the ``Q`` pairs: bootstrap
        interval and null band (NaN for pairs without replicates); empty without.
      warnings: per CCA-family measure, ``Q`` few-examples warnings (None: no warning).
      num_rows: rows streamed (``num_examples``, times ``h * w`` for flatten_positions).
      widths: the ``L`` layers' feature counts.
      replicates: per measure, ``boot (B, Q)`` and ``null (K, Q)`` replicate values (NaN
        for pairs without): for summaries of derived quantities (means over pairs).
    """

    labels: list[str]
    steps: list[int]
    layers: list[str]
    pairs: np.ndarray
    values: dict[str, np.ndarray]
    num_examples: int
    reduction: str
    intervals: dict[str, intervals.Summary] = dataclasses.field(default_factory=dict)
    warnings: dict[str, list[str | None]] = dataclasses.field(default_factory=dict)
    num_rows: int = 0
    widths: list[int] = dataclasses.field(default_factory=list)
    replicates: dict[str, resample.Replicates] = dataclasses.field(default_factory=dict)

    def field(self, name: str, field: str = "value") -> np.ndarray:
        """``(Q,)`` ``values[name]`` (``field="value"``) or a field of its `intervals.Summary`
        (``low``, ``high``, ``null_low``, ``null_high``, ...; all NaN without intervals)."""
        if field == "value":
            return self.values[name]
        if name not in self.intervals:
            return np.full(len(self.pairs), np.nan)
        return getattr(self.intervals[name], field)

    def matrix(self, name: str, field: str = "value") -> np.ndarray:
        """``(C, L, C, L)`` symmetric array of `field` of ``name``, NaN where not computed."""
        num_c, num_l = len(self.labels), len(self.layers)
        m = np.full((num_c * num_l, num_c * num_l), np.nan)
        m[self.pairs[:, 0], self.pairs[:, 1]] = self.field(name, field)
        m[self.pairs[:, 1], self.pairs[:, 0]] = self.field(name, field)
        return m.reshape(num_c, num_l, num_c, num_l)

    def per_layer(self, name: str, field: str = "value") -> np.ndarray:
        """``(L, C, C)``: per layer, the checkpoint x checkpoint matrix of `field` of
        ``name``."""
        return np.einsum("alcl->lac", self.matrix(name, field))

    def replicates_per_layer(self, name: str, kind: str) -> np.ndarray | None:
        """``(R, L, C, C)`` replicates of ``name`` (``kind`` ``'boot'`` or ``'null'``) per
        layer, NaN where none; None without replicates of that kind."""
        reps = self.replicates.get(name)
        reps = None if reps is None else getattr(reps, kind)
        if reps is None:
            return None
        num_c, num_l = len(self.labels), len(self.layers)
        m = np.full((reps.shape[0], num_c * num_l, num_c * num_l), np.nan)
        m[:, self.pairs[:, 0], self.pairs[:, 1]] = reps
        m[:, self.pairs[:, 1], self.pairs[:, 0]] = reps
        return np.einsum("ralcl->rlac", m.reshape(-1, num_c, num_l, num_c, num_l))

    def warning_matrix(self, name: str) -> np.ndarray:
        """``(C, L, C, L)`` object array of the warnings of ``name`` (None: none)."""
        num_c, num_l = len(self.labels), len(self.layers)
        m = np.full((num_c * num_l, num_c * num_l), None, dtype=object)
        for (i, j), w in zip(self.pairs.tolist(), self.warnings.get(name, []), strict=False):
            m[i, j] = m[j, i] = w
        return m.reshape(num_c, num_l, num_c, num_l)


def resolve_layers(stacked: StackedCheckpoints, layers: Sequence[str] = ()) -> list[str]:
    """``layers`` checked against the model's outputs (default: every block and
    ``pre_logits``); raises `ConfigError` listing the valid names."""
    valid = representation_names(stacked.run.model, stacked.run.input_shape)
    unknown = sorted(set(layers) - set(valid))
    if unknown:
        raise ConfigError(f"layers {unknown} are not outputs of the model; valid: {valid}")
    return list(layers) or valid


def checkpoint_similarity(stacked: StackedCheckpoints, *, layers: Sequence[str] = (),
                          pairs: str | np.ndarray = "same_layer",
                          svcca_pairs: np.ndarray | bool | None = None,
                          data: ml_collections.ConfigDict | None = None, split: str = "",
                          reduction: str = "mean_pool", batch_size: int = 250,
                          max_examples: int = 0, debiased: bool = False,
                          svcca_keep: float = 0.99,
                          uncertainty: UncertaintyOptions | None = None,
                          interval_pairs: np.ndarray | None = None) -> CheckpointSimilarity:
    """Linear CKA (and SVCCA) between stacked checkpoints' representations.

    Args:
      stacked: from `stack_checkpoints` / `run_checkpoints`.
      layers: model outputs compared (default: every block and ``pre_logits``).
      pairs: ``"same_layer"`` (every checkpoint pair per layer), ``"all"`` (every pair of
        items), ``"plots"`` (`plot_pairs`) or a ``(Q, 2)`` array of item indices.
      svcca_pairs: ``(Q', 2)`` item pairs, a subset of ``pairs``, that also get SVCCA (an
        eigendecomposition each); True = every pair of ``pairs``; None / False = no SVCCA.
      data: a ``config.data`` section (default: the first run's); ``split`` of it is read in
        order (default: its eval split).
      reduction: how conv maps become ``(n, d)`` (`transfusion_jax.similarity.REDUCTIONS`).
      batch_size: examples per forward pass.
      max_examples: the first this many examples of the split (0 = all).
      debiased: the debiased CKA estimator (Song et al. 2012 HSIC).
      svcca_keep: variance fraction (or number of directions) SVCCA keeps.
      uncertainty: bootstrap and null replicates (`similarity_uncertainty`); None or zero
        counts: none.
      interval_pairs: ``(Q'', 2)`` pairs of ``pairs`` that get an interval and a null band
        (default: the SVCCA pairs, else every pair); items compared with themselves never.

    Raises:
      ConfigError: an unknown layer or pair set, negative replicate counts.
    """
    layers = resolve_layers(stacked, layers)
    num_c, num_l = len(stacked.labels), len(layers)
    if isinstance(pairs, str):
        builders = {"same_layer": same_layer_pairs, "plots": plot_pairs,
                    "all": lambda c, n: all_pairs(c * n)}
        if pairs not in builders:
            raise ConfigError(f"pairs={pairs!r}; choose one of: {', '.join(builders)}")
        pairs = builders[pairs](num_c, num_l)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    data = data or stacked.run.config.data
    source, _ = open_source(data, split or data.eval_split)
    forward = make_stacked_forward(stacked.run.model, layers, reduction)
    kept: list[int] = []
    acts = stacked_activation_batches(forward, stacked.variables,
                                      eval_batches(source, data, batch_size, data.num_threads),
                                      max_examples=max_examples, kept=kept)
    if svcca_pairs is True:
        svcca_pairs = pairs
    has_svcca = svcca_pairs is not None and svcca_pairs is not False and len(svcca_pairs)
    uncertainty = uncertainty or UncertaintyOptions()
    first = next(acts)
    spec = streaming.StreamSpec.create(first, pairs=pairs, debiased=debiased)
    stats = streaming.update(streaming.init(spec, first), first, spec=spec)
    replicates = None
    if uncertainty.enabled:
        chosen = resampled_pairs(pairs, interval_pairs if interval_pairs is not None else
                                 (np.asarray(svcca_pairs) if has_svcca else None))
        if len(chosen):
            replicates = UncertaintyStream(
                uncertainty, first, chosen, debiased=debiased,
                rows_per_example=int(first[0].shape[1]) // kept[0])
            replicates.update(first)
    for batch in acts:
        stats = streaming.update(stats, batch, spec=spec)
        if replicates is not None:
            replicates.update(batch)
    values = {"linear_cka": np.asarray(streaming.linear_cka(stats, spec=spec,
                                                            debiased=debiased))}
    widths = [spec.layout.item_width(li) for li in range(num_l)]
    warnings = {}
    if has_svcca:
        index = {tuple(p): q for q, p in enumerate(pairs.tolist())}
        wanted = sorted({index[tuple(sorted(p))] for p in np.asarray(svcca_pairs).tolist()
                         if tuple(sorted(p)) in index})
        values["svcca"] = np.asarray(streaming.cca_similarity(
            stats, spec=spec, method="svcca", keep=svcca_keep, only=wanted))
        warnings["svcca"] = cca_warnings("svcca", int(stats.count),
                                         [widths[i % num_l] for i in range(num_c * num_l)],
                                         pairs, values["svcca"])
        log_warnings(warnings)
    reps = ({} if replicates is None else
            replicates.replicates(pairs, values, debiased=debiased, svcca_keep=svcca_keep))
    return CheckpointSimilarity(list(stacked.labels), list(stacked.steps), layers, pairs,
                                values, sum(kept), reduction,
                                summaries(values, reps, uncertainty), warnings,
                                int(stats.count), widths, reps)


def checkpoint_pairs(checkpoint_pairs: Sequence[tuple[int, int]],
                     num_layers: int) -> np.ndarray:
    """``(checkpoint, checkpoint)`` pairs -> the ``(Q, 2)`` item pairs of every layer."""
    cp = np.asarray(checkpoint_pairs, dtype=np.int64).reshape(-1, 2)
    layer = np.arange(num_layers)
    return np.stack([(cp[:, :1] * num_layers + layer).ravel(),
                     (cp[:, 1:] * num_layers + layer).ravel()], axis=1)
