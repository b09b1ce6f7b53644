"""The analyze job: what fine-tuning changed between two checkpoints, as one report.

``python -m transfusion_jax.main --config=configs/analyze.py --workdir=OUT
--config.analysis.after=RUN_DIR`` compares ``analysis.before`` (default: the same run at step
0, its initialisation, e.g. the ImageNet weights it was fine-tuned from) with
``analysis.after`` (default step: the newest) and writes into ``OUT``:

- ``weights/``: per layer and filter, how far the weights moved (`weight_change`), and the
  relative change of every layer along the after-run's saved steps;
- ``features/``: per layer, linear CKA and SVCCA between before, after, every saved step of
  the after run, and ``analysis.baselines`` (e.g. another seed), in one stacked pass;
- ``max_activation/``: per channel, the top-k images before and after, their overlap, class
  purity and dead channels (`max_activation`), with image grids;
- ``filters/``: first-layer filters side by side;
- ``feature_vis/``: activation maximisation of the channels whose top images changed most,
  before and after (`feature_vis`);
- ``report.html`` / ``report.md`` with all of it, and ``timings.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from transfusion_jax.analysis import analyze_report
from transfusion_jax.analysis.checkpoint_similarity import (
    CheckpointRef,
    StackedCheckpoints,
    checkpoint_similarity,
    stack_checkpoints,
)
from transfusion_jax.analysis.similarity_files import write_per_layer
from transfusion_jax.analysis.similarity_uncertainty import UncertaintyOptions
from transfusion_jax.config import ConfigError
from transfusion_jax.paths import to_path
from transfusion_jax.runs import Run, parse_ref

log = logging.getLogger(__name__)


def _index(tree: Any, c: int) -> Any:
    return jax.tree.map(lambda v: v[c], tree)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str):
    """Logs the start and duration of one analysis and records it in ``seconds``."""
    log.info("analyze: %s ...", name)
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start
    log.info("analyze: %s done in %.1f s", name, seconds[name])


def _refs(a: ml_collections.ConfigDict) -> tuple[CheckpointRef, CheckpointRef,
                                                  list[CheckpointRef]]:
    if not a.after:
        raise ConfigError("analysis.after must name a training run: RUN_DIR or RUN_DIR@STEP")
    after_dir, after_step = parse_ref(a.after)
    after_step = Run.open(after_dir).latest_step if after_step is None else after_step
    before_dir, before_step = parse_ref(a.before) if a.before else (after_dir, 0)
    before_step = Run.open(before_dir).latest_step if before_step is None else before_step
    baselines = []
    for spec in a.baselines:
        d, s = parse_ref(spec)
        baselines.append(CheckpointRef(f"{d.name}@{s if s is not None else 'last'}", d, s))
    return (CheckpointRef(f"before (step {before_step})", before_dir, before_step),
            CheckpointRef(f"after (step {after_step})", after_dir, after_step), baselines)


def run_analysis(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs every analysis of ``config.analysis`` and writes the report into ``workdir``."""
    a = config.analysis
    out = to_path(workdir)
    before, after, baselines = _refs(a)
    seconds: dict[str, float] = {}
    files: dict[str, Any] = {}
    with _timed(seconds, "load checkpoints"):
        pair = stack_checkpoints([before, after])
        blocks = pair.run.block_names()
        same_run = to_path(before.run_dir) == to_path(after.run_dir)
        steps = [s for s in Run.open(after.run_dir).steps if s <= after.step]
        along = (stack_checkpoints([CheckpointRef(f"step {s}", after.run_dir, s)
                                    for s in steps])
                 if same_run and len(steps) > 2 else None)
    out.mkdir(parents=True, exist_ok=True)  # every input read: nothing half-written before
    with _timed(seconds, "parameter space"):
        files["weights"], weights = _weights(pair, along, blocks, out / "weights")
    with _timed(seconds, "feature space"):
        refs = [before, after, *baselines]
        if along is not None:
            refs += [CheckpointRef(f"step {s}", after.run_dir, s) for s in steps
                     if s not in (before.step, after.step)]
        features = checkpoint_similarity(
            stack_checkpoints(refs), layers=tuple(a.layers), split=a.split,
            max_examples=a.max_examples, svcca_pairs=True,
            uncertainty=UncertaintyOptions.from_config(config.similarity))
        files["features"] = write_per_layer(features, out / "features",
                                            title="Linear CKA between checkpoints, per layer")
        files["features"]["along_png"] = str(analyze_report.plot_feature_change(
            features, out / "features" / "before_after.png"))
    with _timed(seconds, "maximal activation images"):
        files["max_activation"], comparisons = _max_activation(config, pair, out)
    with _timed(seconds, "filters"):
        files["filters"] = _filters(pair, blocks, baselines, out / "filters")
    with _timed(seconds, "feature visualisation"):
        files["feature_vis"] = _feature_vis(config, pair, comparisons, out / "feature_vis")
    (out / "timings.json").write_text(json.dumps(seconds, indent=2) + "\n")
    html, md = analyze_report.write_analysis_report(
        out, before=before, after=after, baselines=baselines, model_name=config_name(pair),
        weights=weights, features=features, comparisons=comparisons, files=files,
        timings=seconds)
    log.info("analysis report: %s", html)
    return {"files": files, "report_html": str(html), "report_md": str(md),
            "timings": seconds, "features": features, "comparisons": comparisons}


def config_name(stacked: StackedCheckpoints) -> str:
    c = stacked.run.config
    return f"{c.model.name} on {c.data.name}"


def _weights(pair: StackedCheckpoints, along: StackedCheckpoints | None, blocks,
             out: Path) -> tuple[dict[str, str], Any]:
    from transfusion_jax.analysis.weight_change import layer_changes, trajectory_changes
    from transfusion_jax.analysis.weight_change_plots import write_weight_change

    params = pair.variables["params"]
    result = layer_changes(_index(params, 0), _index(params, 1), blocks=blocks)
    trajectory = (trajectory_changes(along.variables["params"], steps=along.steps,
                                     blocks=blocks) if along is not None else None)
    return write_weight_change(result, out, trajectory=trajectory,
                               title="Weight change, before -> after"), result


def _max_activation(config, pair: StackedCheckpoints, out: Path) -> tuple[dict[str, str], list]:
    from transfusion_jax.analysis.max_activation import max_activation_topk, stacked_maps_forward
    from transfusion_jax.analysis.max_activation_compare import compare_topk, largest_finite_k
    from transfusion_jax.analysis.max_activation_plots import (
        plot_max_activation,
        write_max_activation,
    )
    from transfusion_jax.data import eval_batches, open_source

    a, data = config.analysis, pair.run.config.data
    layers = list(a.layers) or [b for b in pair.run.block_names()
                                if b not in ("head", "stem")]
    source, meta = open_source(data, a.split or data.eval_split)
    ks = tuple(a.top_k)
    results = max_activation_topk(
        stacked_maps_forward(pair.run.model, layers), pair.variables,
        eval_batches(source, data, config.similarity.batch_size, data.num_threads),
        layers=layers, k=largest_finite_k(ks), num_classes=meta.num_classes,
        num_examples=a.max_examples)
    comparisons = [compare_topk(results[layer], ks) for layer in layers if layer in results]
    files = write_max_activation(out / "max_activation", comparisons, results)
    files.update(plot_max_activation(out / "max_activation", comparisons, results, source,
                                     channels_shown=a.channels_shown))
    return files, comparisons


def _filters(pair, blocks, baselines, out: Path) -> dict[str, str]:
    from transfusion_jax.analysis.filters import first_conv_kernel, plot_filter_grids

    params = pair.variables["params"]
    kernels = {"before": first_conv_kernel(_index(params, 0), blocks),
               "after": first_conv_kernel(_index(params, 1), blocks)}
    for ref in baselines:
        other = Run.open(ref.run_dir).read_variables(ref.step)["params"]
        kernels[ref.label] = first_conv_kernel(other, blocks)
    path = plot_filter_grids(kernels, out / "conv1_filters.png",
                             title="First-layer filters")
    return {"png": str(path)}


def _feature_vis(config, pair: StackedCheckpoints, comparisons, out: Path) -> dict[str, str]:
    """The channels whose top images changed most, of the middle compared layer (the last
    one when at most two layers are compared). A visualisation whose objective did not
    rise (`feature_vis.objective_gain`) is flat: logged and listed on the page."""
    from transfusion_jax.analysis.feature_vis import (
        objective_gain,
        plot_feature_vis,
        visualize_channels,
    )

    a = config.analysis
    if not comparisons or a.feature_vis_channels <= 0:
        return {}
    comp = comparisons[len(comparisons) // 2] if len(comparisons) > 2 else comparisons[-1]
    k = comp.ks[0]
    overlap = np.where(np.isnan(comp.overlap[k]), np.inf, comp.overlap[k])
    channels = [int(c) for c in np.argsort(overlap, kind="stable")[: a.feature_vis_channels]]
    data = pair.run.config.data
    images, trace = visualize_channels(
        pair.run.model, pair.variables, comp.layer, channels, size=a.feature_vis_size,
        steps=a.feature_vis_steps, channels_in=data.channels,
        preprocess=data.normalize, stacked=True)
    path = plot_feature_vis(
        images, out / f"feature_vis_{comp.layer}.png", row_labels=["before", "after"],
        col_labels=[f"{comp.layer}:{c}\noverlap {comp.overlap[k][c]:.2f}" for c in channels])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "feature_vis.npz", images=np.asarray(images), trace=np.asarray(trace),
             channels=np.array(channels))
    _, flat = objective_gain(trace)  # (2, channels): before, after
    flat_names = [f"{when} {comp.layer}:{c}" for row, when in enumerate(("before", "after"))
                  for j, c in enumerate(channels) if flat[row, j]]
    if flat_names:
        log.warning("analyze: feature visualisation stayed flat (no objective gain) for %s",
                    ", ".join(flat_names))
    return {"png": str(path), "layer": comp.layer, "channels": ",".join(map(str, channels)),
            "flat": ", ".join(flat_names)}
