"""gs:// paths against a real local GCS server (`tests.gcs_server`, the ``test`` extra).

A quickstart-smoke run with a ``gs://`` workdir trains, is killed (SIGKILL), resumes and
ends equal to an uninterrupted one; a tfds dataset under a ``gs://`` data dir is read; a
sweep's aggregate report is written to ``gs://``; a ``gs://`` path without the ``[gcs]``
extra or without credentials is one ``error:`` line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from etils import epath

from tests.conftest import ROOT, cli_args, cli_env, run_cli
from tests.gcs_server import BUCKET, gcs_env, gcs_server  # noqa: F401 (a fixture)

STEPS = 16
OVERRIDES = (f"--config.train.steps={STEPS}", "--config.checkpoint.every_steps=4",
             "--config.checkpoint.keep_last=20", "--config.eval.every_steps=8",
             "--config.log.every_steps=4")


def committed_steps(url: str, checkpoints: str) -> list[int]:
    """Steps of a gs:// checkpoints folder that Orbax finished (``commit_success.txt``),
    listed by the server's JSON API (gcsfs would answer from its listings cache)."""
    prefix = checkpoints.removeprefix(f"gs://{BUCKET}/") + "/"
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}", timeout=10) as r:
        names = [item["name"] for item in json.loads(r.read()).get("items", [])]
    return sorted(int(n.split("/")[-2]) for n in names
                  if n.endswith("/commit_success.txt") and n.split("/")[-2].isdigit())


def losses(workdir: str, split: str = "train") -> list[float]:
    from transfusion_jax.runs import read_metrics

    return [r["loss"] for r in read_metrics(workdir) if r["split"] == split]


def params(workdir: str, step: int = STEPS) -> list[np.ndarray]:
    import jax

    from transfusion_jax.runs import Run

    return jax.tree.leaves(Run.open(workdir).read_variables(step))


@pytest.mark.slow  # run with -m slow; about 50 s on 2 cores (three CLI runs)
def test_gs_workdir_killed_and_resumed_equals_uninterrupted(gcs_server, data_dir):  # noqa: F811
    env = cli_env(1, **gcs_env(gcs_server))
    reference, killed = f"gs://{BUCKET}/train/reference", f"gs://{BUCKET}/train/killed"
    proc = run_cli(reference, data_dir, *OVERRIDES, **gcs_env(gcs_server))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (ROOT / "gs:").exists(), "a gs:// workdir became a local folder"

    proc = subprocess.Popen(cli_args(killed, data_dir, *OVERRIDES), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = f"{killed}/checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(s >= 8 for s in committed_steps(gcs_server, checkpoints)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = max(committed_steps(gcs_server, checkpoints))
    assert 8 <= killed_at < STEPS
    assert not (epath.Path(killed) / "summary.json").exists()

    proc = run_cli(killed, data_dir, *OVERRIDES, **gcs_env(gcs_server))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step {killed_at}" in proc.stderr
    assert losses(killed) == losses(reference)
    assert len(losses(killed)) == STEPS // 4
    assert losses(killed, "eval") == losses(reference, "eval")
    for a, b in zip(params(killed), params(reference), strict=True):
        assert np.array_equal(a, b)
    summary = json.loads((epath.Path(killed) / "summary.json").read_text())
    assert summary["files"]["checkpoints"] == f"{killed}/checkpoints"
    assert (epath.Path(killed) / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_tfds_dataset_under_gs_data_dir_is_read(gcs_server, data_dir, tmp_path,  # noqa: F811
                                                monkeypatch):
    from transfusion_jax.config import base_config
    from transfusion_jax.data import open_source
    from transfusion_jax.data.staging import upload

    remote = f"gs://{BUCKET}/tfds"
    upload(os.path.join(data_dir, "digits"), f"{remote}/digits")  # prepared locally, copied
    monkeypatch.setenv("TFJ_DATA_CACHE", str(tmp_path / "cache"))
    data = base_config().data
    data.name, data.data_dir = "digits", remote
    source, meta = open_source(data, "test")
    data.data_dir = data_dir
    local_source, local_meta = open_source(data, "test")
    assert meta == local_meta
    for i in (0, 1, len(source) - 1):
        np.testing.assert_array_equal(source[i]["image"], local_source[i]["image"])
        assert source[i]["label"] == local_source[i]["label"]
    staged = list((tmp_path / "cache" / BUCKET / "tfds" / "digits").rglob("*.array_record*"))
    assert staged, "the records were not staged to the local cache"


def test_shipped_dataset_prepared_into_gs_data_dir(gcs_server, tmp_path,  # noqa: F811
                                                   monkeypatch):
    from transfusion_jax.config import base_config
    from transfusion_jax.data import open_source

    monkeypatch.setenv("TFJ_DATA_CACHE", str(tmp_path / "cache"))
    data = base_config().data
    data.name, data.data_dir = "digits", f"gs://{BUCKET}/fresh_tfds"
    _, meta = open_source(data, "train")
    assert meta.num_examples > 0
    uploaded = [p.name for p in (epath.Path(data.data_dir) / "digits").glob("*/*")]
    assert "dataset_info.json" in uploaded
    assert any(".array_record" in name for name in uploaded)


def test_sweep_report_written_to_gs(gcs_server, finished_run):  # noqa: F811
    from transfusion_jax.experiments.aggregate import aggregate_sweep, write_aggregate
    from transfusion_jax.experiments.grid import RUNS_DIR, STATUS_FILE

    sweep = f"gs://{BUCKET}/sweep"
    runs = epath.Path(sweep) / RUNS_DIR
    for seed in (0, 1):  # the same finished run as two seeds of one group
        run = runs / f"init=random,seed={seed}"
        for name in ("metrics.jsonl", "summary.json"):
            (run / name).write_text((finished_run / name).read_text())
        (run / STATUS_FILE).write_text(json.dumps(
            {"status": "finished", "axes": {"init": "random"}, "seed": seed}))
    result = aggregate_sweep(sweep, baseline="random", resamples=50, confidence=0.9)
    assert result["runs"]["finished"] == 2, result["runs"]
    files = write_aggregate(result, f"{sweep}/aggregate")
    assert files["md"] == f"{sweep}/aggregate/aggregate.md"
    assert epath.Path(files["md"]).read_text().startswith("#")
    assert json.loads(epath.Path(files["json"]).read_text())["runs"]["finished"] == 2
    assert epath.Path(files["csv"]).read_text().splitlines()[0]
    assert epath.Path(files["curves_png"]).read_bytes()[:4] == b"\x89PNG"


def _cli_error(env: dict[str, str], workdir: str, data_dir: str,
               prelude: str = "") -> subprocess.CompletedProcess:
    code = (f"{prelude}\nimport sys\nfrom transfusion_jax.main import main\n"
            f"sys.exit(main(sys.argv))")
    args = [sys.executable, "-c", code, *cli_args(workdir, data_dir)[3:]]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_gs_path_without_the_extra_is_one_error_line(data_dir):
    # gcsfs made unimportable in the child (a None entry in sys.modules raises ImportError)
    proc = _cli_error(cli_env(1), "gs://some-bucket/run", data_dir,
                      prelude="import sys; sys.modules['gcsfs'] = None")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: gs://some-bucket/run: "), proc.stderr[-2000:]
    assert "pip install 'transfusion_jax[gcs]'" in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (ROOT / "gs:").exists()


def test_gs_path_without_credentials_is_one_error_line(data_dir, tmp_path):
    env = cli_env(1, HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
                  GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
                  NO_GCE_CHECK="true")
    for key in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
        env.pop(key, None)
    proc = _cli_error(env, "gs://some-bucket/run", data_dir)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: gs://some-bucket/run: no Google Cloud credentials"), \
        proc.stderr[-2000:]
    assert "gcloud auth application-default login" in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
