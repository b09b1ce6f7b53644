"""The words and tables of a sweep's aggregate: Markdown, CSV rows, the conclusion.

Reads the result dict of `aggregate.aggregate_sweep` (see its docstring for the fields);
computes nothing statistical itself.
"""

from __future__ import annotations

from typing import Any


def _ci_text(ci: dict[str, Any], fmt: str, lower_bound: bool = False) -> str:
    if ci["n"] == 0 or ci["estimate"] is None:
        return "—"
    est = ("≥ " if lower_bound else "") + format(ci["estimate"], fmt)
    return f"{est} (1 run)" if ci["n"] == 1 else (
        f"{est} [{format(ci['lo'], fmt)}, {format(ci['hi'], fmt)}]")


def speedup_text(group: dict[str, Any], baseline: str) -> str:
    """``"2.10× [1.80, 2.50]"``; ``≥``/``≤``/``~`` when censoring biases it, ``†`` unpaired."""
    if group["is_baseline"]:
        return "1 (baseline)"
    s = group["speedup"]
    if s is None:
        return f"— (no {baseline} run)"
    prefix = {"lower": "≥ ", "upper": "≤ ", "unknown": "~ "}.get(s["bound"], "")
    text = prefix + _ci_text(s["ci"], ".2f").replace(" [", "× [", 1).replace(" (1", "× (1", 1)
    return text + (" †" if s["pairing"] == "independent" else "")


def summary_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The human-readable table: ``(header, rows)`` of formatted cells, one row per group."""
    conv, pct = result["convergence"], f"{result['confidence']:.0%}"
    header = ["group", "runs (reached/total)", f"steps to threshold, mean [{pct} CI]",
              "KM median steps", f"speed-up vs {result['baseline']} [{pct} CI]",
              f"final {conv['metric']} [{pct} CI]"]
    rows = []
    for g in result["groups"]:
        st = g["steps"]
        km = st["km_median"]
        rows.append([
            g["label"], f"{st['n_reached']}/{st['n_runs']}",
            _ci_text(st["restricted_mean"], ".0f", st["lower_bound"]),
            f"{km:.0f}" if km is not None else f"> {st['total_steps']}",
            speedup_text(g, result["baseline"]),
            _ci_text(g["final"].get(conv["metric"], {"n": 0, "estimate": None}), ".3f")])
    return header, rows


def csv_rows(result: dict[str, Any]) -> list[list[Any]]:
    """Machine-readable rows (header first) of ``aggregate.csv``; empty cell = missing."""
    metrics = sorted({m for g in result["groups"] for m in g["final"]})
    header = ["group", *(f"axis_{a}" for a in result["axes"]), "seeds", "n_runs", "n_reached",
              "total_steps", "steps_mean", "steps_lo", "steps_hi", "steps_lower_bound",
              "km_median", "speedup", "speedup_lo", "speedup_hi", "speedup_pairing",
              "speedup_n", "speedup_bound",
              *(f"final_{m}_{k}" for m in metrics for k in ("mean", "lo", "hi", "n")),
              "wall_time_s_mean", "wall_time_s_lo", "wall_time_s_hi"]
    rows: list[list[Any]] = [header]
    for g in result["groups"]:
        st, sp, rm = g["steps"], g["speedup"], g["steps"]["restricted_mean"]
        sp_ci = sp["ci"] if sp else {}
        finals = [g["final"].get(m, {}).get(k.replace("mean", "estimate"))
                  for m in metrics for k in ("mean", "lo", "hi", "n")]
        wt = g["wall_time_s"]
        row = [g["label"], *(g["axes"].get(a, "") for a in result["axes"]),
               " ".join(map(str, g["seeds"])), st["n_runs"], st["n_reached"],
               st["total_steps"], rm["estimate"], rm["lo"], rm["hi"], st["lower_bound"],
               st["km_median"], sp_ci.get("estimate"), sp_ci.get("lo"), sp_ci.get("hi"),
               sp["pairing"] if sp else "", sp_ci.get("n"), sp["bound"] if sp else "",
               *finals, wt["estimate"], wt["lo"], wt["hi"]]
        rows.append(["" if v is None else v for v in row])  # floats at full precision
    return rows


def _threshold_text(conv: dict[str, Any]) -> str:
    return f"eval {conv['metric']} {'≥' if conv['mode'] == 'max' else '≤'} {conv['threshold']}"


def _context_sentences(groups: list[dict], result: dict[str, Any]) -> list[str]:
    """The conclusion for groups that differ only in the baseline axis (e.g. the inits)."""
    base_name, conv = result["baseline"], result["convergence"]
    name = lambda g: str(g["axes"].get(result["baseline_axis"], g["label"]))  # noqa: E731
    pct = f"{result['confidence']:.0%}"
    if not any(g["steps"]["n_reached"] for g in groups):
        total = max(g["steps"]["total_steps"] for g in groups)
        return [f"No run reached {_threshold_text(conv)} within {total} steps, so convergence "
                "speed cannot be compared: lower the threshold or train longer."]
    rated = [g for g in groups if g["speedup"] and g["speedup"]["ci"]["estimate"] is not None]
    if not rated:
        best = min(groups, key=lambda g: g["steps"]["restricted_mean"]["estimate"])
        rm = best["steps"]["restricted_mean"]
        lead = f"{name(best)} reached {_threshold_text(conv)} fastest" if len(groups) > 1 else (
            f"{name(best)} reached {_threshold_text(conv)}")
        return [f"{lead} in {_ci_text(rm, '.0f', best['steps']['lower_bound'])} steps "
                f"(mean [{pct} CI]); no {base_name} run to compare with, so no speed-up is "
                "reported."]
    best = max(rated, key=lambda g: g["speedup"]["ci"]["estimate"])
    sp, base = best["speedup"], next(g for g in groups if g["is_baseline"])
    ci, n = sp["ci"], sp["ci"]["n"]
    mean = lambda g: (("≥ " if g["steps"]["lower_bound"] else "")  # noqa: E731
                      + f"{g['steps']['restricted_mean']['estimate']:.0f}")
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    bound = {"lower": "≥ ", "upper": "≤ ", "unknown": "~ "}.get(sp["bound"], "")
    interval = f" ({pct} CI {ci['lo']:.2f}–{ci['hi']:.2f})" if n > 1 else ""
    lead = (f"{name(best)} reached {_threshold_text(conv)} fastest" if ci["estimate"] > 1
            else f"No variant reached {_threshold_text(conv)} faster than {base_name} "
                 f"({name(best)} came closest)")
    out = [f"{lead}: {mean(best)} steps on average versus {mean(base)} for {base_name}, a "
           f"speed-up of {bound}{ci['estimate']:.2f}×{interval}, {sp['pairing']} over {seeds}. "]
    if n <= 1:
        out.append("With one seed there is no interval; run more seeds before concluding. ")
    elif ci["lo"] > 1:
        out.append(f"The interval excludes 1: faster than {base_name} at {seeds}"
                   + (" (few seeds: the interval is rough). " if n < 5 else ". "))
    elif ci["hi"] < 1:
        out.append(f"The interval lies below 1: slower than {base_name} at {seeds}. ")
    else:
        out.append(f"The interval includes 1: not distinguishable from {base_name} at "
                   f"{seeds}. ")
    out.append({"lower": f"Some {base_name} runs never reached the threshold, so the true "
                         "speed-up is likely larger. ",
                "upper": f"Some {name(best)} runs never reached the threshold, so the "
                         "true speed-up may be smaller. ",
                "unknown": "Runs of both groups never reached the threshold; the ratio "
                           "compares lower bounds. "}.get(sp["bound"], ""))
    return ["".join(out).strip()]


def conclusion(result: dict[str, Any]) -> str:
    """One plain-language paragraph: the fastest variant, its speed-up and whether it is real."""
    if not result["groups"]:
        return result.get("conclusion", "Nothing to aggregate.")
    contexts: dict[str, list[dict]] = {}
    for g in result["groups"]:
        other = {a: v for a, v in g["axes"].items() if a != result["baseline_axis"]}
        contexts.setdefault(", ".join(f"{a}={v}" for a, v in sorted(other.items())),
                            []).append(g)
    parts = [(f"With {ctx}: " if ctx and len(contexts) > 1 else "") + s
             for ctx, groups in contexts.items() for s in _context_sentences(groups, result)]
    left_out = result["runs"]["failed"] + result["runs"]["not_finished"]
    if left_out:
        parts.append(f"{len(left_out)} run(s) left out (failed or not finished): "
                     + ", ".join(r["name"] for r in left_out) + ".")
    return " ".join(parts)


def markdown(result: dict[str, Any]) -> str:
    """``aggregate.md``: the conclusion, the table, how to read it, final metrics, left-outs."""
    conv = result["convergence"]
    if conv is None:
        return f"# Sweep aggregate\n\n{result['conclusion']}\n"
    header, rows = summary_table(result)
    pct = f"{result['confidence']:.0%}"
    table = lambda h, rs: ["| " + " | ".join(h) + " |", "|" + "---|" * len(h),  # noqa: E731
                           *("| " + " | ".join(r) + " |" for r in rs)]
    metrics = sorted({m for g in result["groups"] for m in g["final"]})
    finals = [[g["label"], *(_ci_text(g["final"].get(m, {"n": 0, "estimate": None}), ".4f")
                             for m in metrics), _ci_text(g["wall_time_s"], ".0f")]
              for g in result["groups"]]
    lines = [
        f"# Sweep aggregate: steps to {_threshold_text(conv)}", "", result["conclusion"], "",
        *table(header, rows), "",
        f"- **steps**: restricted mean over seeds; a run that never reached the threshold "
        f"counts as its run length, so \"≥\" marks a lower bound. Intervals: {pct} BCa "
        f"bootstrap over seeds ({result['resamples']} resamples); with fewer than 5 seeds they "
        "are rough.",
        "- **KM median**: Kaplan-Meier median steps; \"> N\" when more than half of the runs "
        "never reached the threshold in N steps.",
        f"- **speed-up**: mean steps of {result['baseline']} (same other axes) / mean steps of "
        "the group, > 1 = faster; paired bootstrap over shared seeds (†: seeds did not pair, "
        "resampled independently); \"≥\" / \"≤\" / \"~\" when censored runs bias it down / up "
        "/ either way.", "",
        f"## Final evaluation metrics (mean [{pct} CI] over seeds)", "",
        *table(["group", *metrics, "wall time (s)"], finals), ""]
    left_out = result["runs"]["failed"] + result["runs"]["not_finished"]
    if left_out:
        lines += ["## Runs left out", "",
                  *(f"- `{r['name']}`: {r['status']}" + (f" — {r['error'][:200]}"
                                                         if r["error"] else "")
                    for r in left_out), ""]
    return "\n".join(lines)
