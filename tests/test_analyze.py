"""The analyze job end to end on a tiny real run: every analysis, the report, and the
properties a comparison of a checkpoint with itself must have."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from tests.conftest import smoke_config
from transfusion_jax.analysis.analyze import run_analysis
from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(smoke_config(data_dir), workdir)  # checkpoints 0, 8, 12
    return workdir


def analyze_config(after, before=""):
    config = load_config("configs/analyze.py:smoke")
    config.analysis.after = str(after)
    config.analysis.before = before
    return config


def test_report_of_a_fine_tuned_run(run_dir, tmp_path):
    result = run_analysis(analyze_config(run_dir), tmp_path)
    html = (tmp_path / "report.html").read_text()
    for title in ("What changed", "Parameter space", "Feature space",
                  "Maximal activation images", "First-layer filters", "Feature visualisation",
                  "Timings"):
        assert title in html
    for src in re.findall(r'src="([^"]+)"', html):  # every figure the page shows exists
        assert (tmp_path / src).is_file(), src
    assert len(re.findall(r"<img ", html)) >= 9
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) >= {"parameter space", "feature space", "maximal activation images",
                            "filters", "feature visualisation"}
    # Steps 0 (before), 12 (after) and the saved step 8 between them, all compared at once.
    assert result["features"].steps == [0, 12, 8]
    assert "nan" not in (tmp_path / "features/cross_run.csv").read_text().lower()
    with open(tmp_path / "features/cross_run.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["linear_cka_low"]) <= float(r["linear_cka_high"]) and
               float(r["linear_cka_null_low"]) <= float(r["linear_cka_null_high"])
               for r in rows)
    assert "null band" in html


def test_a_checkpoint_compared_with_itself_did_not_change(run_dir, tmp_path):
    result = run_analysis(analyze_config(f"{run_dir}@12", before=f"{run_dir}@12"), tmp_path)
    cka = result["features"].per_layer("linear_cka")
    np.testing.assert_allclose(cka[:, 0, 1], 1.0, atol=1e-5)
    with open(tmp_path / "weights/weight_change_layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["relative_change"]) == 0.0 for r in rows)
    for comp in result["comparisons"]:
        alive = ~comp.dead_before
        np.testing.assert_array_equal(comp.overlap[comp.ks[0]][alive], 1.0)


def test_analysis_needs_a_run(tmp_path):
    with pytest.raises(ConfigError, match="analysis.after must name a training run"):
        run_analysis(analyze_config(""), tmp_path)
    with pytest.raises(ConfigError, match="not a training run's workdir"):
        run_analysis(analyze_config(tmp_path), tmp_path / "out")
