"""Aggregation of a sweep directory written with the trainer's own writers (no training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from transfusion_jax.experiments.aggregate import aggregate_sweep, write_aggregate
from transfusion_jax.train.convergence import ConvergenceTracker
from transfusion_jax.train.summary import write_summary
from transfusion_jax.train.writer import MetricWriter

TOTAL, EVERY = 1000, 100


def fake_run(sweep: Path, axes: dict[str, str], seed: int, tau: float, *,
             status: str = "finished", threshold: float = 0.9, metric: str = "accuracy",
             noise=None) -> Path:
    """One run dir as the sweep and the trainer write it: eval accuracy ``1 - exp(-t/tau)``."""
    name = ",".join([*(f"{a}={v}" for a, v in sorted(axes.items())), f"seed={seed}"])
    run_dir = sweep / "runs" / name
    run_dir.mkdir(parents=True)
    writer = MetricWriter(run_dir, tensorboard=False)
    tracker = ConvergenceTracker(metric, threshold, "max")
    last = TOTAL if status == "finished" else TOTAL // 2
    result = {}
    for step in range(EVERY, last + 1, EVERY):
        value = 1.0 - math.exp(-step / tau) + (noise(step) if noise else 0.0)
        writer.write(step, "train", {"loss": 1.0 - value, "accuracy": value})
        result = {"loss": 1.0 - value, "accuracy": value, "auc": min(1.0, value + 0.05),
                  "map": value, "num_examples": 500}
        writer.write(step, "eval", result)
        tracker.update(step, result)  # as the loop does, then its convergence line
        if tracker.step == step or (step == TOTAL and tracker.step is None):
            writer.write(step, "convergence", {
                "threshold": threshold, "reached": float(tracker.step is not None),
                "steps_to_threshold": tracker.step or math.nan})
    if status == "finished":
        write_summary(run_dir, {
            "title": name, "steps": TOTAL, "wall_time_s": 60.0 + seed, "examples_per_sec": 1e3,
            "final_eval": result, "convergence": tracker.to_dict(), "files": {}})
    extra = {"error": "training loss became nan at step 420"} if status == "failed" else {}
    (run_dir / "sweep_run.json").write_text(json.dumps(
        {"name": name, "axes": axes, "seed": seed, "status": status, **extra}))
    return run_dir


@pytest.fixture
def sweep(tmp_path) -> Path:
    """3 inits x 3 seeds: mean_var seed 2 never converges, pretrained seed 2 failed, plus a
    fourth random seed still running."""
    taus = {"random": 200, "mean_var": 150, "pretrained": 100}
    for seed in range(3):
        for init, tau in taus.items():
            status = "failed" if (init, seed) == ("pretrained", 2) else "finished"
            tau = 1000 if (init, seed) == ("mean_var", 2) else tau * (1 + 0.1 * seed)
            fake_run(tmp_path, {"init": init}, seed, tau, status=status)
    fake_run(tmp_path, {"init": "random"}, 3, 200, status="running")
    return tmp_path


def test_aggregate_counts_censoring_and_speedups(sweep):
    result = aggregate_sweep(sweep, resamples=500)
    runs = result["runs"]
    assert (runs["total"], runs["finished"]) == (10, 8)
    assert [r["name"] for r in runs["failed"]] == ["init=pretrained,seed=2"]
    assert [r["name"] for r in runs["not_finished"]] == ["init=random,seed=3"]
    assert result["convergence"] == {"metric": "accuracy", "threshold": 0.9, "mode": "max"}
    groups = {g["label"]: g for g in result["groups"]}
    assert [g["label"] for g in result["groups"]] == ["random", "mean_var", "pretrained"]
    # Eval every 100 steps: random reaches 0.9 at 500/600/600, mean_var 400/400/never,
    # pretrained 300/300.
    assert groups["random"]["run_steps"] == [500, 600, 600]
    mv = groups["mean_var"]["steps"]
    assert (mv["n_runs"], mv["n_reached"], mv["lower_bound"]) == (3, 2, True)
    assert mv["restricted_mean"]["estimate"] == pytest.approx((400 + 400 + 1000) / 3)
    assert mv["km_median"] == 400
    sp = groups["pretrained"]["speedup"]
    assert sp["pairing"] == "paired" and sp["seeds"] == [0, 1]
    assert sp["ci"]["estimate"] == pytest.approx((500 + 600) / (300 + 300))
    assert groups["mean_var"]["speedup"]["bound"] == "upper"
    assert groups["random"]["speedup"] is None and groups["random"]["is_baseline"]
    assert set(groups["random"]["final"]) == {"accuracy", "auc", "loss", "map"}
    curve = groups["random"]["curve"]
    assert curve["steps"] == list(range(100, 1001, 100)) and curve["n"] == 3
    assert all(lo <= m <= hi for lo, m, hi in zip(curve["lo"], curve["mean"], curve["hi"],
                                                  strict=True))
    assert "pretrained reached eval accuracy ≥ 0.9 fastest" in result["conclusion"]
    assert "1.83×" in result["conclusion"]


def test_write_aggregate_files(sweep, tmp_path):
    result = aggregate_sweep(sweep, resamples=500)
    files = write_aggregate(result, tmp_path / "agg")
    md = Path(files["md"]).read_text()
    assert "≥ 600" in md and "2/3" in md  # mean_var: censored, a lower bound
    assert "init=pretrained,seed=2" in md and "nan at step 420" in md
    assert "| pretrained | 2/2 |" in md
    with open(files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == ["random", "mean_var", "pretrained"]
    assert rows[1]["steps_lower_bound"] == "True" and rows[1]["axis_init"] == "mean_var"
    assert float(rows[2]["speedup"]) == pytest.approx(1100 / 600)
    assert rows[0]["speedup"] == "" and rows[0]["final_accuracy_n"] == "3"
    assert json.loads(Path(files["json"]).read_text())["runs"]["finished"] == 8
    for key in ("curves_png", "steps_png", "speedup_png"):
        assert Path(files[key]).stat().st_size > 10_000, key
    assert "depth_png" not in files  # no transfusion_k<k> init


def test_two_axes_pair_within_model_and_plot_depth(tmp_path):
    taus = {"random": 300, "transfusion_k1": 220, "transfusion_k3": 120}
    for model, scale in (("cbr_small", 1.0), ("resnet18", 0.7)):
        for init, tau in taus.items():
            for seed in (0, 1):
                fake_run(tmp_path, {"init": init, "model": model}, seed, tau * scale + 10 * seed)
    result = aggregate_sweep(tmp_path, resamples=300)
    groups = {g["label"]: g for g in result["groups"]}
    assert len(groups) == 6 and result["axes"] == ["init", "model"]
    k3 = groups["init=transfusion_k3,model=resnet18"]
    assert k3["baseline_group"] == "init=random,model=resnet18"
    assert k3["speedup"]["ci"]["estimate"] > 1
    assert result["groups"][0]["label"] == "init=random,model=cbr_small"
    assert "With model=cbr_small:" in result["conclusion"]
    files = write_aggregate(result, tmp_path / "agg")
    assert Path(files["depth_png"]).stat().st_size > 10_000


def test_mixed_criteria_rejected_and_empty_sweep_reported(tmp_path):
    fake_run(tmp_path / "a", {"init": "random"}, 0, 200, threshold=0.9)
    fake_run(tmp_path / "a", {"init": "pretrained"}, 0, 100, threshold=0.8)
    with pytest.raises(ValueError, match="different convergence criteria"):
        aggregate_sweep(tmp_path / "a")
    fake_run(tmp_path / "b", {"init": "random"}, 0, 200, status="failed")
    result = aggregate_sweep(tmp_path / "b")
    assert result["groups"] == [] and "No finished run" in result["conclusion"]
    files = write_aggregate(result, tmp_path / "b" / "agg")
    assert "No finished run" in Path(files["md"]).read_text()
    assert not any(k.endswith("_png") for k in files)


def test_ci_includes_one_is_worded_honestly(tmp_path):
    # Same speed on average, seed-to-seed noise: the interval must include 1.
    for seed, (tau_r, tau_m) in enumerate([(200, 150), (150, 210), (180, 175)]):
        fake_run(tmp_path, {"init": "random"}, seed, tau_r)
        fake_run(tmp_path, {"init": "mean_var"}, seed, tau_m)
    result = aggregate_sweep(tmp_path, resamples=500)
    assert "not distinguishable from random at 3 seeds" in result["conclusion"]


def test_single_seed_and_missing_baseline_are_reported(tmp_path):
    fake_run(tmp_path / "a", {"init": "random"}, 0, 200)
    fake_run(tmp_path / "a", {"init": "pretrained"}, 0, 100)
    result = aggregate_sweep(tmp_path / "a", resamples=100)
    assert "With one seed there is no interval" in result["conclusion"]
    files = write_aggregate(result, tmp_path / "a" / "agg")
    assert "300 (1 run)" in Path(files["md"]).read_text()
    assert "speedup_png" in files
    fake_run(tmp_path / "b", {"init": "mean_var"}, 0, 200)
    fake_run(tmp_path / "b", {"init": "pretrained"}, 0, 100)
    result = aggregate_sweep(tmp_path / "b", resamples=100)
    assert "no random run to compare with" in result["conclusion"]
    files = write_aggregate(result, tmp_path / "b" / "agg")
    assert "— (no random run)" in Path(files["md"]).read_text()
    assert "speedup_png" not in files and "curves_png" in files
