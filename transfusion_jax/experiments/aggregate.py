"""Aggregates a sweep over seeds: convergence speed, speed-ups and final metrics with CIs.

A sweep holds one training run per variant x seed under ``SWEEP/runs/<name>/``, each with
``sweep_run.json`` (``name``, ``axes``, ``seed``, ``status``), ``summary.json`` and
``metrics.jsonl``. A *group* is every finished run with the same axes values (they differ
only by seed). Per group, `aggregate_sweep` computes (definitions in `stats`):

- steps to the convergence threshold: runs reached / total, restricted mean with a bootstrap
  CI (a lower bound, "≥", when some run never reached it), Kaplan-Meier median;
- speed-up over the baseline group (same values of the other axes, ``baseline_axis`` set to
  ``baseline``): ratio of restricted means, paired bootstrap over seeds;
- every scalar final eval metric and the wall time: mean and bootstrap CI;
- the eval curve of the convergence metric on the eval steps common to the group's runs:
  mean over seeds with a bootstrap CI band.

`write_aggregate` writes ``aggregate.csv`` / ``.md`` / ``.json`` and the plots.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from transfusion_jax.config import ConfigError
from transfusion_jax.experiments import aggregate_plots
from transfusion_jax.experiments.aggregate_text import conclusion, csv_rows, markdown
from transfusion_jax.experiments.grid import RUNS_DIR, group_label, read_json, read_status
from transfusion_jax.experiments.stats import bootstrap_ci, jsonable, paired_speedup, steps_summary
from transfusion_jax.outputs import write_csv
from transfusion_jax.paths import to_path
from transfusion_jax.runs import read_metrics

log = logging.getLogger(__name__)

NOT_METRICS = ("num_examples",)  # scalar final_eval entries that are counts, not metrics


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``transfusion_k2`` before ``transfusion_k10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _read_runs(sweep_dir: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """``(finished, failed, not_finished)`` run records of ``sweep_dir/runs/*``."""
    finished, failed, other = [], [], []
    runs_dir = sweep_dir / RUNS_DIR
    run_dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for run_dir in run_dirs:
        status = read_status(run_dir)
        name = status.get("name", run_dir.name)
        state = status.get("status", "not started")
        summary = read_json(run_dir / "summary.json")
        if state == "finished" and summary:
            finished.append({"name": name, "dir": run_dir, "axes": status.get("axes", {}),
                             "seed": int(status.get("seed", 0)), "summary": summary})
        elif state == "failed":
            failed.append({"name": name, "status": state, "error": status.get("error", "")})
        else:
            reason = "finished but no summary.json" if state == "finished" else state
            other.append({"name": name, "status": reason, "error": status.get("error", "")})
    return finished, failed, other


def _convergence_spec(runs: list[dict]) -> dict[str, Any]:
    specs = {(r["summary"]["convergence"]["metric"], r["summary"]["convergence"]["threshold"],
              r["summary"]["convergence"]["mode"]): r["name"] for r in runs}
    if len(specs) > 1:
        raise ConfigError("runs of the sweep track different convergence criteria, so their "
                         f"steps cannot be compared: {specs}; aggregate sweeps of one criterion")
    metric, threshold, mode = next(iter(specs))
    return {"metric": metric, "threshold": threshold, "mode": mode}


def _steps(summary: dict[str, Any]) -> int | None:
    conv = summary["convergence"]
    step = conv["steps_to_threshold"] if "steps_to_threshold" in conv else conv.get("step")
    return None if step is None or conv.get("reached") is False else int(step)


def _curve(runs: list[dict], metric: str, **boot: Any) -> dict[str, Any]:
    """Mean and CI band of eval ``metric`` over the group's runs, on their common steps."""
    series = []
    for run in runs:
        points = {r["step"]: r.get(metric) for r in read_metrics(run["dir"])
                  if r.get("split") == "eval" and metric in r}
        series.append({s: math.nan if v is None else float(v) for s, v in points.items()})
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[step] for s in series] for step in common],
                      dtype=np.float64).reshape(len(common), len(series))
    ci = bootstrap_ci(values, **boot)
    return {"steps": common, "mean": ci.estimate, "lo": ci.lo, "hi": ci.hi, "n": len(runs)}


def _finite_ci(values: list[Any], **boot: Any) -> dict[str, Any]:
    """Bootstrap CI of the finite numbers among ``values`` (missing / NaN ones left out)."""
    finite = [float(v) for v in values
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return bootstrap_ci(finite, **boot).to_dict()


def _finals(runs: list[dict], **boot: Any) -> dict[str, dict[str, Any]]:
    names = sorted({k for r in runs for k, v in r["summary"].get("final_eval", {}).items()
                    if isinstance(v, int | float) and k not in NOT_METRICS})
    return {name: _finite_ci([r["summary"]["final_eval"].get(name) for r in runs], **boot)
            for name in names}


def _baseline_label(axes: dict[str, str], baseline_axis: str, baseline: str) -> str | None:
    return group_label({**axes, baseline_axis: baseline}) if baseline_axis in axes else None


def aggregate_sweep(sweep_dir: str | Path, *, baseline: str = "random",
                    baseline_axis: str = "init", resamples: int = 10000,
                    confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Per-group statistics over seeds of every finished run of a sweep.

    Args:
      sweep_dir: the sweep's workdir (runs under ``runs/<name>/``).
      baseline: the value of ``baseline_axis`` speed-ups are measured against.
      baseline_axis: the axis holding the initialisation (``"init"``).
      resamples: bootstrap resamples for every interval.
      confidence: interval coverage, e.g. 0.95.
      seed: seed of the bootstrap's random generator (results are reproducible).

    Returns:
      A JSON-ready dict: ``convergence`` (metric, threshold, mode), ``runs`` (counts and the
      failed / not finished runs, which are left out), ``groups`` (one dict per group, the
      baseline first, see the module docstring) and ``conclusion`` (one plain paragraph).

    Raises:
      ConfigError: runs that track different convergence metrics or thresholds.
    """
    sweep_dir = to_path(sweep_dir)
    finished, failed, other = _read_runs(sweep_dir)
    for run in failed + other:
        log.warning("aggregate: %s left out (%s)", run["name"], run["status"])
    result: dict[str, Any] = {
        "sweep_dir": str(sweep_dir), "baseline": baseline, "baseline_axis": baseline_axis,
        "resamples": resamples, "confidence": confidence, "seed": seed,
        "runs": {"total": len(finished) + len(failed) + len(other), "finished": len(finished),
                 "failed": failed, "not_finished": other},
        "axes": sorted({a for r in finished for a in r["axes"]}), "groups": []}
    if not finished:
        result["convergence"] = None
        result["conclusion"] = (f"No finished run in {sweep_dir / RUNS_DIR}: nothing to "
                                "aggregate.")
        return result
    result["convergence"] = spec = _convergence_spec(finished)
    rng = np.random.default_rng(seed)
    boot = {"resamples": resamples, "confidence": confidence, "rng": rng}
    by_group: dict[str, list[dict]] = {}
    for run in finished:
        by_group.setdefault(group_label(run["axes"]), []).append(run)
    groups = {}
    for label, runs in by_group.items():
        runs.sort(key=lambda r: r["seed"])
        steps = [_steps(r["summary"]) for r in runs]
        totals = [int(r["summary"]["steps"]) for r in runs]
        axes = runs[0]["axes"]
        groups[label] = {
            "label": label, "axes": axes, "seeds": [r["seed"] for r in runs],
            "runs": [r["name"] for r in runs], "run_steps": steps, "run_total_steps": totals,
            "is_baseline": axes.get(baseline_axis) == baseline,
            "baseline_group": _baseline_label(axes, baseline_axis, baseline),
            "steps": steps_summary(steps, totals, **boot).to_dict(),
            "final": _finals(runs, **boot),
            "wall_time_s": _finite_ci([r["summary"].get("wall_time_s") for r in runs], **boot),
            "curve": _curve(runs, spec["metric"], **boot), "speedup": None}
    for g in groups.values():
        base = groups.get(g["baseline_group"] or "")
        if base is not None and not g["is_baseline"]:
            g["speedup"] = paired_speedup(
                (base["seeds"], base["run_steps"], base["run_total_steps"]),
                (g["seeds"], g["run_steps"], g["run_total_steps"]), **boot).to_dict()
    order = sorted(groups.values(), key=lambda g: (
        [natural_key(str(v)) for a, v in sorted(g["axes"].items()) if a != baseline_axis],
        not g["is_baseline"], natural_key(g["label"])))
    result["groups"] = jsonable(order)
    result["conclusion"] = conclusion(result)
    return result


def write_aggregate(result: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Writes ``aggregate.csv``, ``aggregate.md``, ``aggregate.json`` and the plots.

    Returns:
      ``{"csv": path, "md": path, "json": path, "<plot>_png": path, ...}``.
    """
    out_dir = to_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": out_dir / "aggregate.csv", "md": out_dir / "aggregate.md",
             "json": out_dir / "aggregate.json"}
    header, *rows = csv_rows(result)
    write_csv(files["csv"], header, rows, digits=None)
    files["md"].write_text(markdown(result))
    files["json"].write_text(json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    out = {k: str(v) for k, v in files.items()}
    out.update(aggregate_plots.write_plots(result, out_dir))
    log.info("aggregate: %s", files["md"])
    return out
