"""The end-of-run summary: ``summary.json`` (machine) and ``summary.md`` (people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from etils import epath

from transfusion_jax.paths import to_path, write_text


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary(workdir: str | Path, summary: dict[str, Any]
                  ) -> tuple[epath.Path, epath.Path]:
    """Writes the summary dict as JSON and as a short Markdown page.

    Expected keys: ``title``, ``final_eval`` (metric -> value), ``convergence``
    (`ConvergenceTracker.to_dict()`), ``steps``, ``wall_time_s``, ``examples_per_sec``,
    ``files`` (name -> path).
    """
    workdir = to_path(workdir)
    json_path, md_path = workdir / "summary.json", workdir / "summary.md"
    write_text(json_path, json.dumps(summary, indent=2) + "\n")
    conv = summary["convergence"]
    reached = (f"step **{conv['steps_to_threshold']}** ({conv['metric']} = "
               f"{conv['value_at_threshold']:.4f})" if conv["reached"]
               else f"**not reached** in {summary['steps']} steps")
    lines = [
        f"# {summary['title']}", "",
        f"- steps: {summary['steps']}, wall time: {summary['wall_time_s']:.1f} s, "
        f"training throughput: {summary['examples_per_sec']:.0f} examples/s",
        f"- convergence: eval {conv['metric']} {'>=' if conv['mode'] == 'max' else '<='} "
        f"{conv['threshold']} first at {reached}", "",
        "| final eval metric | value |", "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in summary["final_eval"].items()], "",
        "Files:", *[f"- {k}: `{v}`" for k, v in summary["files"].items()], "",
    ]
    for name, values in summary.get("final_evals", {}).items():
        lines += _evaluator_table(name, values)
    write_text(md_path, "\n".join(lines))
    return json_path, md_path


def split_key(key: str) -> tuple[str, str]:
    """``"linear_cka/block1"`` -> ``("linear_cka", "block1")``; ``"loss"`` -> ``("loss", "")``."""
    metric, _, block = key.partition("/")
    return metric, block


def _evaluator_table(name: str, values: dict[str, Any]) -> list[str]:
    """A Markdown table of one evaluator's final values: metrics x blocks."""
    metrics = list(dict.fromkeys(split_key(k)[0] for k in values))
    blocks = list(dict.fromkeys(split_key(k)[1] for k in values))
    head = [f"| {name} at the last step | " + " | ".join(b or "value" for b in blocks) + " |",
            "|---" * (len(blocks) + 1) + "|"]
    rows = [f"| {m} | " + " | ".join(_fmt(values[f"{m}/{b}" if b else m])
                                      if (f"{m}/{b}" if b else m) in values else ""
                                      for b in blocks) + " |" for m in metrics]
    return [*head, *rows, ""]
