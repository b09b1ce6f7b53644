"""The sweep report: aggregate statistics, similarity, filters, one HTML + Markdown page.

`report_sweep` runs after every run of a sweep has finished (or failed); ``job = aggregate``
calls it on an existing sweep workdir (e.g. after a multi-host sweep).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from transfusion_jax.analysis.html_report import Figure, Section, Table, write_report
from transfusion_jax.analysis.similarity_uncertainty import UncertaintyOptions
from transfusion_jax.experiments.aggregate_text import summary_table
from transfusion_jax.experiments.dynamics import write_dynamics
from transfusion_jax.experiments.grid import (
    GridRun,
    expand_grid,
    group_label,
    read_json,
    read_status,
    run_dir,
)
from transfusion_jax.experiments.group_similarity import group_similarity
from transfusion_jax.paths import to_path

log = logging.getLogger(__name__)


def _run_rows(runs: Sequence[GridRun], dirs: Sequence[Path]) -> list[list[str]]:
    rows = []
    for run, d in zip(runs, dirs, strict=True):
        status, summary = read_status(d), read_json(d / "summary.json")
        conv = summary.get("convergence", {})
        final = summary.get("final_eval", {})
        reached = conv.get("steps_to_threshold")
        rows.append([run.name, status.get("status", "not started"),
                     "never" if reached is None and summary else str(reached or ""),
                     f"{final[conv['metric']]:.4f}" if conv.get("metric") in final else "",
                     f"{summary.get('wall_time_s', 0):.0f}" if summary else "",
                     status.get("error", "")[:120]])
    return rows


def _filters(runs: Sequence[GridRun], dirs: Sequence[Path], out_dir: Path) -> Path | None:
    """conv1 of each group's first-seed run, at init and trained, side by side."""
    from transfusion_jax.analysis.filters import first_conv_kernel, plot_filter_grids
    from transfusion_jax.runs import Run

    kernels = {}
    seen = set()
    for run, d in zip(runs, dirs, strict=True):
        group = group_label(run.axes)
        if group in seen or read_status(d).get("status") != "finished":
            continue
        seen.add(group)
        run = Run.open(d)
        blocks = run.block_names()
        for step, when in ((0, "init"), (run.latest_step, "trained")):
            params = run.read_variables(step)["params"]
            kernels[f"{group}, {when}"] = first_conv_kernel(params, blocks)
    if not kernels:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_filter_grids(kernels, out_dir / "conv1_filters.png",
                             title="First-layer filters at init and after training "
                                   "(first seed of each init)", columns=4)


def report_sweep(config: ml_collections.ConfigDict, sweep_dir: str | Path,
                 runs: Sequence[GridRun] | None = None) -> dict[str, str]:
    """Aggregates a finished sweep and writes ``report.html`` / ``report.md`` into it."""
    from transfusion_jax.experiments.aggregate import aggregate_sweep, write_aggregate
    start = time.perf_counter()
    sweep_dir = to_path(sweep_dir)
    runs = list(runs) if runs is not None else expand_grid(config, sweep_dir)
    dirs = [run_dir(sweep_dir, r) for r in runs]
    s = config.sweep
    agg = aggregate_sweep(sweep_dir, baseline=s.baseline, resamples=s.bootstrap,
                          confidence=s.confidence, seed=config.seed)
    files = dict(write_aggregate(agg, sweep_dir / "aggregate"))
    finished = [(r, d) for r, d in zip(runs, dirs, strict=True)
                if read_status(d).get("status") == "finished"]
    if s.similarity and finished:
        sim = config.similarity
        log.info("sweep report: similarity of %d trained models to their inits and to each "
                 "other (CKA%s, %d bootstrap and %d null replicates; a minute or two on 2 CPU "
                 "cores for the quickstart; sweep.similarity=False skips it)", len(finished),
                 " and SVCCA" if sim.svcca else "", sim.bootstrap, sim.null)
        files.update(group_similarity(
            [r for r, _ in finished], [d for _, d in finished], sweep_dir / "similarity",
            max_examples=config.similarity.max_examples, reduction=config.similarity.reduction,
            svcca=config.similarity.svcca,
            uncertainty=UncertaintyOptions.from_config(config.similarity)))
    if finished:
        files.update(write_dynamics([r for r, _ in finished], [d for _, d in finished],
                                    sweep_dir / "dynamics"))
    filters = _filters(runs, dirs, sweep_dir / "filters")
    if filters:
        files["filters_png"] = str(filters)
    sections = _sections(config, sweep_dir, runs, dirs, agg, files)
    title = (f"Transfer sweep: {config.model.name} on {config.data.name}, "
             f"{len(runs)} runs ({len(s.seeds)} seeds)")
    html_path, md_path = write_report(sweep_dir, title, sections)
    files.update(report_html=str(html_path), report_md=str(md_path))
    log.info("sweep report in %.1f s: %s", time.perf_counter() - start, html_path)
    return files


def _sections(config, sweep_dir: Path, runs, dirs, agg: dict, files: dict) -> list[Section]:
    conv = config.convergence
    answer = agg.get("conclusion", "")
    sections = [Section("Answer", [answer], highlight=True)]
    md_table = to_path(files.get("md", sweep_dir / "aggregate" / "aggregate.md"))
    header, rows = summary_table(agg)
    table = Table("", header, rows)
    sections.append(Section(
        "Convergence speed",
        [f"Steps to reach eval {conv.metric} {'>=' if conv.mode == 'max' else '<='} "
         f"{conv.threshold} (evaluated every {config.eval.every_steps} steps), over seeds "
         f"{tuple(config.sweep.seeds)}; intervals are {config.sweep.confidence:.0%} BCa "
         f"bootstrap intervals over seeds ({config.sweep.bootstrap} resamples). Runs that "
         "never reached the threshold count as the run length (a lower bound, marked >=). "
         f"Full table: {md_table.name}."],
        tables=[table],
        figures=[Figure(p, c) for p, c in _aggregate_figures(sweep_dir / "aggregate")]))
    if "to_init_png" in files:
        sections.append(Section(
            "Representations",
            ["Linear CKA (and SVCCA) on the target test set, features mean-pooled, between "
             "each trained model and its own initialisation, and between trained models "
             "(same seed across inits; the diagonal compares two seeds of one init, the "
             "random-vs-random baseline of Transfusion)."],
            figures=[Figure(files["to_init_png"], "Per layer: similarity of each trained "
                            "model to its own initialisation (1 = unchanged)"),
                     Figure(files["between_png"], "Per layer: CKA between trained models")]))
    if "dynamics_png" in files:
        sections.append(Section(
            "Learning dynamics",
            ["Logged while training by the runs' evaluators, on a fixed subset of the test "
             "set: each block's linear CKA with the run's own initialisation (1 = "
             "unchanged; Transfusion's Fig. 6) and the relative change of its weights. "
             "Mean over seeds, band from the lowest to the highest seed."],
            figures=[Figure(files["dynamics_png"], "Per block, per init: similarity to the "
                            "initialisation and weight change over training")]))
    if "filters_png" in files:
        sections.append(Section("First-layer filters", [], figures=[
            Figure(files["filters_png"], "conv1 filters per init, before and after training "
                                         "(each filter min-max normalised)")]))
    sections.append(Section("Runs", [f"Sweep folder: {sweep_dir}"], tables=[Table(
        "", ["run", "status", "steps to threshold", f"final {conv.metric}", "wall s", "error"],
        _run_rows(runs, dirs))]))
    return sections


def _aggregate_figures(agg_dir: Path) -> list[tuple[Path, str]]:
    captions = {
        "curves": "Eval metric over training, mean over seeds with a band",
        "steps_to_threshold": "Steps to threshold per init, with intervals",
        "speedup": "Speed-up over the baseline init, with intervals (1 = as fast)",
        "transfusion_depth": "Speed-up against transfusion depth k",
    }
    out = []
    for png in sorted(agg_dir.glob("*.png")):
        caption = next((c for k, c in captions.items() if k in png.stem), png.stem)
        out.append((png, caption))
    return out
