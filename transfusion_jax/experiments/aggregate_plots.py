"""Plots (PNG) of a sweep aggregate: curves with bands, steps to threshold, speed-ups.

Every function reads the dict of `aggregate.aggregate_sweep` and writes one PNG:

- ``curves.png``: per group, the eval convergence metric against the step, the mean over
  seeds with a shaded band = the BCa bootstrap CI of that mean (the aggregate's
  confidence), computed on the eval steps common to the group's runs; the threshold as a
  dashed line; one panel per value of the other axes, one colour per init;
- ``steps_to_threshold.png``: restricted mean steps with CI error bars, each run as a dot
  (an ``x`` at the run length when it never reached the threshold), censored groups drawn
  hollow and marked "≥", the Kaplan-Meier median as a diamond;
- ``speedup.png``: speed-up over the baseline with CI error bars and a line at 1;
- ``transfusion_depth.png``: speed-up against the transfusion depth ``k`` for init labels
  ``transfusion_k<k>`` (the baseline, ``k``-free, is the line at 1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib.ticker as ticker
import numpy as np

from transfusion_jax.outputs import plt, save_figure
from transfusion_jax.paths import to_path

DEPTH = re.compile(r"transfusion_k(\d+)$")


def _colour_key(group: dict[str, Any], result: dict[str, Any]) -> str:
    return str(group["axes"].get(result["baseline_axis"], group["label"]))


def _colours(result: dict[str, Any]) -> dict[str, Any]:
    keys = list(dict.fromkeys(_colour_key(g, result) for g in result["groups"]))
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def _contexts(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Groups by the values of the axes other than the baseline axis."""
    out: dict[str, list[dict[str, Any]]] = {}
    for g in result["groups"]:
        other = {a: v for a, v in g["axes"].items() if a != result["baseline_axis"]}
        out.setdefault(", ".join(f"{a}={v}" for a, v in sorted(other.items())), []).append(g)
    return out


def _f(x: Any) -> float:
    return np.nan if x is None else float(x)


def plot_convergence_curves(result: dict[str, Any], path: str | Path) -> Path:
    """Mean eval curve per group with its bootstrap CI band and the threshold line."""
    conv, colours, contexts = result["convergence"], _colours(result), _contexts(result)
    cols = min(len(contexts), 3)
    rows = -(-len(contexts) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.3 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, (ctx, groups) in zip(axes.flat, contexts.items(), strict=False):
        for g in groups:
            c = g["curve"]
            steps = np.asarray(c["steps"], dtype=float)
            if not steps.size:
                continue
            colour = colours[_colour_key(g, result)]
            mean = np.array([_f(v) for v in c["mean"]])
            ax.plot(steps, mean, "-", color=colour, lw=1.8, label=f"{_colour_key(g, result)} "
                    f"(n={c['n']})")
            if c["n"] > 1:
                ax.fill_between(steps, [_f(v) for v in c["lo"]], [_f(v) for v in c["hi"]],
                                color=colour, alpha=0.2, lw=0)
        ax.axhline(conv["threshold"], color="grey", ls="--", lw=1,
                   label=f"threshold {conv['threshold']}")
        ax.set(xlabel="step", ylabel=f"eval {conv['metric']}", title=ctx or None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if conv["mode"] == "max" else "upper right")
    for ax in list(axes.flat)[len(contexts):]:
        ax.set_visible(False)
    fig.suptitle(f"Eval {conv['metric']} over training\nmean over seeds; band = "
                 f"{result['confidence']:.0%} bootstrap CI of the mean", fontsize=11)
    return save_figure(fig, path)


def _hbar_axes(labels: list[str], title: str) -> tuple[plt.Figure, plt.Axes]:
    width = 7.5 + 0.07 * max(len(label) for label in labels)  # room for long group labels
    fig, ax = plt.subplots(figsize=(width, 1.9 + 0.55 * len(labels)), layout="constrained")
    fig.suptitle(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return fig, ax


def plot_steps_to_threshold(result: dict[str, Any], path: str | Path) -> Path:
    """Restricted mean steps per group with CI bars, per-run dots and censoring marks."""
    conv, colours, groups = result["convergence"], _colours(result), result["groups"]
    op = "≥" if conv["mode"] == "max" else "≤"
    fig, ax = _hbar_axes([g["label"] for g in groups],
                         f"Steps to eval {conv['metric']} {op} {conv['threshold']}: restricted "
                         f"mean over seeds, {result['confidence']:.0%} bootstrap CI\n"
                         "a run that never reached it counts as the run length (≥)")
    total = max(g["steps"]["total_steps"] for g in groups)
    rng = np.random.default_rng(0)
    for y, g in enumerate(groups):
        colour, st = colours[_colour_key(g, result)], g["steps"]
        rm = st["restricted_mean"]
        times = np.array([s if s is not None else t
                          for s, t in zip(g["run_steps"], g["run_total_steps"], strict=True)],
                         dtype=float)
        censored = np.array([s is None for s in g["run_steps"]])
        jitter = y + 0.25 + rng.uniform(-0.07, 0.07, size=times.size)  # runs: below the bar
        ax.scatter(times[~censored], jitter[~censored], s=18, color=colour, alpha=0.7, lw=0)
        ax.scatter(times[censored], jitter[censored], s=36, color=colour, marker="x")
        if rm["estimate"] is None:
            continue
        err = [[rm["estimate"] - rm["lo"]], [rm["hi"] - rm["estimate"]]]
        ax.errorbar(rm["estimate"], y, xerr=err, fmt="o", ms=8, capsize=4, color=colour,
                    mfc="white" if st["lower_bound"] else colour, mew=2)
        label = ("≥ " if st["lower_bound"] else "") + f"{rm['estimate']:.0f}"
        ax.annotate(label, (rm["hi"], y), xytext=(6, 5), textcoords="offset points",
                    fontsize=8)
        if st["km_median"] is not None:
            ax.plot(st["km_median"], y, "D", ms=5, color="black", alpha=0.7)
    ax.axvline(total, color="grey", ls="--", lw=1)
    ax.scatter([], [], s=18, color="grey", lw=0, label="one run")
    ax.scatter([], [], s=36, color="grey", marker="x", label="one run, never reached")
    ax.plot([], [], "D", ms=5, color="black", alpha=0.7, label="Kaplan-Meier median")
    ax.plot([], [], "o", ms=8, mfc="white", color="grey", mew=2, label="≥: some runs censored")
    ax.plot([], [], "--", color="grey", lw=1, label=f"run length ({total} steps)")
    ax.set_yticks(range(len(groups)), [g["label"] for g in groups])
    ax.set_xlim(0, total * 1.12)
    ax.set_ylim(len(groups) - 0.5, -0.6)
    ax.set_xlabel("training steps")
    fig.legend(fontsize=8, loc="outside lower center", ncols=5)
    return save_figure(fig, path)


def plot_speedup(result: dict[str, Any], path: str | Path) -> Path | None:
    """Speed-up over the baseline per group with CI bars and a line at 1 (None: none)."""
    groups = [g for g in result["groups"] if g["speedup"] and g["speedup"]["ci"]["n"]]
    if not groups:
        return None
    colours = _colours(result)
    fig, ax = _hbar_axes([g["label"] for g in groups],
                         f"Speed-up over {result['baseline']}, {result['confidence']:.0%} "
                         f"bootstrap CI (> 1 = faster)\nmean steps of {result['baseline']} / "
                         "mean steps of the group (paired over seeds)")
    for y, g in enumerate(groups):
        sp, colour = g["speedup"], colours[_colour_key(g, result)]
        ci = sp["ci"]
        err = [[ci["estimate"] - ci["lo"]], [ci["hi"] - ci["estimate"]]]
        ax.errorbar(ci["estimate"], y, xerr=err, fmt="o" if sp["pairing"] == "paired" else "s",
                    ms=8, capsize=4, color=colour, mfc="white" if sp["bound"] else colour, mew=2)
        prefix = {"lower": "≥ ", "upper": "≤ ", "unknown": "~ "}.get(sp["bound"], "")
        ax.annotate(f"{prefix}{ci['estimate']:.2f}× [{ci['lo']:.2f}, {ci['hi']:.2f}]",
                    (ci["hi"], y), xytext=(6, 5), textcoords="offset points", fontsize=8)
    ax.axvline(1.0, color="grey", ls="--", lw=1, label=f"{result['baseline']} (1×)")
    ax.errorbar([], [], xerr=[], fmt="o", color="grey", mfc="white", mew=2,
                label="hollow: censored runs bias it (≥ / ≤ / ~)")
    if any(g["speedup"]["pairing"] == "independent" for g in groups):
        ax.errorbar([], [], xerr=[], fmt="s", color="grey", label="square: seeds not paired")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    lo = min(min(g["speedup"]["ci"]["lo"] for g in groups), 1.0)
    hi = max(max(g["speedup"]["ci"]["hi"] for g in groups), 1.0)
    ax.set_xlim(lo / 1.25, hi * 1.6)
    ax.set_yticks(range(len(groups)), [g["label"] for g in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xlabel("speed-up (log scale)")
    fig.legend(fontsize=8, loc="outside lower center", ncols=3)
    return save_figure(fig, path)


def plot_speedup_vs_depth(result: dict[str, Any], path: str | Path) -> Path | None:
    """Speed-up against transfusion depth k (init labels ``transfusion_k<k>``; None: none)."""
    axis = result["baseline_axis"]
    lines = {}
    for ctx, groups in _contexts(result).items():
        pts = [(int(m.group(1)), g["speedup"]["ci"]) for g in groups
               if (m := DEPTH.match(str(g["axes"].get(axis, "")))) and g["speedup"]]
        ref = next((g["speedup"]["ci"] for g in groups if g["axes"].get(axis) == "pretrained"
                    and g["speedup"]), None)
        if pts:
            lines[ctx] = (sorted(pts, key=lambda p: p[0]), ref)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for i, (ctx, (pts, ref)) in enumerate(lines.items()):
        colour = plt.get_cmap("tab10")(i % 10)
        k = np.array([p[0] for p in pts])
        est, lo, hi = (np.array([_f(p[1][f]) for p in pts]) for f in ("estimate", "lo", "hi"))
        ax.errorbar(k, est, yerr=[est - lo, hi - est], fmt="o-", capsize=4, color=colour,
                    label=ctx or "transfusion")
        if ref is not None:
            ax.axhline(ref["estimate"], color=colour, ls=":", lw=1.2,
                       label=f"pretrained (all layers){f', {ctx}' if ctx else ''}")
    ax.axhline(1.0, color="grey", ls="--", lw=1, label=f"{result['baseline']} (1×)")
    ax.set(xlabel="transfusion depth k (pretrained prefix up to block k, random above)",
           ylabel=f"speed-up over {result['baseline']}",
           title=f"Convergence speed-up against transfusion depth, {result['confidence']:.0%} CI")
    ax.set_xticks(sorted({p[0] for pts, _ in lines.values() for p in pts}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_plots(result: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Every plot that applies to ``result``; ``{"curves_png": path, ...}``."""
    if not result["groups"]:
        return {}
    out_dir = to_path(out_dir)
    plots = {"curves_png": (plot_convergence_curves, "curves.png"),
             "steps_png": (plot_steps_to_threshold, "steps_to_threshold.png"),
             "speedup_png": (plot_speedup, "speedup.png"),
             "depth_png": (plot_speedup_vs_depth, "transfusion_depth.png")}
    files = {}
    for key, (fn, name) in plots.items():
        path = fn(result, out_dir / name)
        if path is not None:
            files[key] = str(path)
    return files
