"""The TPU-VM launcher (`transfusion_jax.launch.tpu_vm`), everything but the TPU.

The scripts it sends to the workers are run here through ``bash -c``, as the worker's login
shell runs ``gcloud ... ssh --command=SCRIPT``: the job must receive exactly the argv it was
given, survive the hang-up of the session that started it, and be seen and stopped by
``status`` and ``stop``. Each subcommand's gcloud argv is checked as ``--dry-run`` prints it
and, where the Cloud SDK is installed, against gcloud's own argument parser (with no
credentials, so nothing can reach a project).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from transfusion_jax.launch import tpu_vm

# Words a shell would mangle if they were not quoted, one per argv element.
AWKWARD = [
    "plain", "two words", "it's", 'say "hi"', "(parens)", "f(x) = [1, 2]",
    "--config.data.data_dir=gs://b/tfds", "--config.note=a=b=c", "key=value with spaces",
    "$HOME", "${PATH}", "$(echo pwned)", "`echo pwned`", "back\\slash", "\\", "", "   ",
    "*", "~", "~/x", "a;b && c || d", "x > y < z | w", "new\nline", "tab\there", "!bang",
    "#hash", "é ü 中", "-", "--", "'", '"', "'\"'\"'",
]

# The program started on the "worker": it writes its argv and the launcher's variables.
PROBE = ("import json, os, sys, time; time.sleep(float(os.environ.get('PROBE_SLEEP', '0'))); "
         "print('ARGV=' + json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
         "'env': {k: os.environ.get(k) for k in ('TFJ_DISTRIBUTED', "
         "'TFJ_EXPECT_ACCELERATOR')}}), flush=True)")


@pytest.fixture
def worker(tmp_path) -> dict[str, str]:
    """A fake worker: its own HOME (``~`` in the scripts) holding ``~/transfusion_jax``."""
    home = tmp_path / "home"
    (home / "transfusion_jax").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFJ_")}
    env["HOME"] = str(home)
    return env


def remote_shell(script: str, env: dict[str, str], shell: str = "bash"
                 ) -> subprocess.CompletedProcess:
    """Runs ``script`` as sshd has the worker's login shell run an ssh command string, in
    its own session (so the test can hang it up)."""
    return subprocess.run([shell, "-c", script], env=env, capture_output=True, text=True,
                          timeout=30, start_new_session=True)


def ssh_delivers(gcloud_argv: list[str]) -> str:
    """The string a worker's shell receives for ``gcloud ... ssh --command=C``: gcloud
    splits C at single spaces into ssh's remote-command words, OpenSSH joins them with
    single spaces (the Cloud SDK's tpu_vm ssh and util/ssh modules)."""
    [command] = [a for a in gcloud_argv if a.startswith("--command=")]
    return " ".join(command.removeprefix("--command=").split(" "))


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def probe_result(home: Path) -> dict:
    log = (home / "tfj_runs" / "run.log").read_text()
    [line] = [x for x in log.splitlines() if x.startswith("ARGV=")]
    return json.loads(line.removeprefix("ARGV="))


def start(argv: list[str], env: dict[str, str], shell: str = "bash"
          ) -> subprocess.CompletedProcess:
    """`tpu_vm.remote_run_script` of ``python -c PROBE *argv`` through the gcloud layer (the
    script as one argv element of ``gcloud ... --command=``) and the worker's shell."""
    script = tpu_vm.remote_run_script([sys.executable, "-c", PROBE, *argv])
    gcloud = tpu_vm.ssh_argv("my-tpu", "us-central2-b", script)
    return remote_shell(ssh_delivers(gcloud), env, shell)


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_run_passes_awkward_arguments_through_intact(worker, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    proc = start(AWKWARD, worker, shell)
    assert proc.returncode == 0, proc.stderr
    home = Path(worker["HOME"])
    wait_for(home / "tfj_runs" / "run.exit")
    result = probe_result(home)
    assert result["argv"] == AWKWARD
    assert result["cwd"] == str(home / "transfusion_jax")
    assert result["env"] == {"TFJ_DISTRIBUTED": "auto", "TFJ_EXPECT_ACCELERATOR": "1"}
    assert (home / "tfj_runs" / "run.exit").read_text().strip() == "0"
    assert "started pid" in proc.stdout and str(home / "tfj_runs" / "run-") in proc.stdout


@pytest.mark.parametrize("argv", [[], [""], ["", ""], ["a b", ""], ["'"], ['"'], ["\\"]])
def test_run_passes_edge_argv(worker, argv):
    assert start(argv, worker).returncode == 0
    home = Path(worker["HOME"])
    wait_for(home / "tfj_runs" / "run.exit")
    assert probe_result(home)["argv"] == argv


def test_job_command_through_the_whole_chain(worker):
    """`run`'s own argv, from the launcher's command line to the job's ``sys.argv``: the
    job command of ``run NAME ZONE CONFIG WORKDIR FLAG...`` with python swapped for the
    probe."""
    flags = ["--config.init.source=/w/my weights (v2).pth", "--config.note=it's \"q\" $X",
             "--config.seeds=(0, 1)"]
    args = tpu_vm.parser().parse_args(
        ["run", "my-tpu", "us-central2-b", "configs/recipe_at_scale.py:dr_resnet50,bf16",
         "gs://b/runs/a b'$X\"", *flags])
    assert args.flags == flags
    [gcloud] = tpu_vm.commands(args)
    script = ssh_delivers(gcloud)
    python = " .venv/bin/python -m "
    assert script.count(python) == 1  # the job's python, exactly once
    probe = f" {shlex.quote(sys.executable)} -c {shlex.quote(PROBE)} -m "
    # a stand-in for the worker's gcloud: it records how the log would be copied
    bin_dir = Path(worker["HOME"]) / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        "open(os.path.expanduser('~/gcloud.tmp'), 'w').write(json.dumps(sys.argv[1:]))\n"
        "os.replace(os.path.expanduser('~/gcloud.tmp'), os.path.expanduser('~/gcloud.json'))\n")
    (bin_dir / "gcloud").chmod(0o755)
    env = {**worker, "PATH": f"{bin_dir}:{worker['PATH']}"}
    proc = remote_shell(script.replace(python, probe), env)
    assert proc.returncode == 0, proc.stderr
    home = Path(worker["HOME"])
    wait_for(home / "gcloud.json")
    assert probe_result(home)["argv"] == [
        "-m", "transfusion_jax.main", "--config=configs/recipe_at_scale.py:dr_resnet50,bf16",
        "--workdir=gs://b/runs/a b'$X\"", *flags]
    log = (home / "tfj_runs" / "run.log").resolve()
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert json.loads((home / "gcloud.json").read_text()) == [
        "storage", "cp", str(log), f"gs://b/runs/a b'$X\"/logs/{host}.log"]


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_run_survives_hangup_and_status_stop_see_it(worker, shell):
    """The session that started the job (ssh's) hangs up: the job goes on; ``status`` sees
    it running, a second ``run`` is refused, ``stop`` ends it, ``status`` says so."""
    home = Path(worker["HOME"])
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    # the session stays open after starting the job (sleep), then hangs up
    script = tpu_vm.remote_run_script([sys.executable, "-c", PROBE, "x"]) + "sleep 60\n"
    session = subprocess.Popen([shell, "-c", script], env={**worker, "PROBE_SLEEP": "60"},
                               start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,  # as sshd starts it: SIGHUP not
                               # ignored, even when pytest itself runs under nohup
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    wait_for(home / "tfj_runs" / "run.pid")
    time.sleep(0.3)
    os.killpg(session.pid, signal.SIGHUP)  # what sshd sends its session when ssh drops
    assert session.wait(timeout=10) == -signal.SIGHUP
    pid = int((home / "tfj_runs" / "run.pid").read_text())
    time.sleep(0.5)
    os.kill(pid, 0)  # the job is alive
    status = remote_shell(tpu_vm.remote_status_script(), worker, shell)
    assert f"running (pid {pid})" in status.stdout, status.stdout
    again = start(["y"], worker, shell)
    assert again.returncode == 1 and "error:" in again.stderr and "still going" in again.stderr
    stop = remote_shell(tpu_vm.remote_stop_script(), worker, shell)
    assert f"stopped pid {pid}" in stop.stdout, stop.stdout + stop.stderr
    deadline = time.monotonic() + 10
    while remote_shell(f"kill -0 {pid} 2>/dev/null", worker).returncode == 0:
        assert time.monotonic() < deadline, "stop left the job running"
        time.sleep(0.1)
    status = remote_shell(tpu_vm.remote_status_script(), worker, shell)
    assert "not running" in status.stdout, status.stdout
    logs = remote_shell(tpu_vm.remote_logs_script(lines=5), worker, shell)
    assert logs.returncode == 0


def test_status_reports_exit_status_and_log_tail(worker):
    home = Path(worker["HOME"])
    script = tpu_vm.remote_run_script(["bash", "-c", "echo last line; exit 3"])
    assert remote_shell(script, worker).returncode == 0
    wait_for(home / "tfj_runs" / "run.exit")
    status = remote_shell(tpu_vm.remote_status_script(), worker).stdout
    assert "finished, exit status 3" in status and "| last line" in status, status
    logs = remote_shell(tpu_vm.remote_logs_script(lines=10), worker).stdout
    assert "| last line" in logs and "| exit status 3" in logs, logs


def test_setup_script_is_valid_bash_and_installs_what_it_must():
    script = tpu_vm.remote_setup_script("https://example.org/me/transfusion jax.git", "v1 (x)")
    for shell in ("bash", "dash"):
        if shutil.which(shell):
            assert subprocess.run([shell, "-n", "-c", script]).returncode == 0
    assert "uv venv --allow-existing --python 3.12 .venv" in script
    assert "-e '.[gcs]' 'jax[tpu]'" in script
    assert "git clone 'https://example.org/me/transfusion jax.git'" in script
    assert "git checkout 'v1 (x)'" in script


def dry_run(*argv: str) -> list[list[str]]:
    """The gcloud argv lists ``launch/tpu_vm.sh --dry-run ARGV`` prints."""
    proc = subprocess.run([str(ROOT / "launch" / "tpu_vm.sh"), "--dry-run", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in split_commands(proc.stdout)]


def split_commands(text: str) -> list[str]:
    """The printed commands (a quoted script may span lines: split where shlex can)."""
    commands, current = [], ""
    for line in text.splitlines(keepends=True):
        current += line
        try:
            shlex.split(current)
        except ValueError:  # inside a quoted string
            continue
        commands.append(current)
        current = ""
    assert not current, text
    return commands


TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
SSH = [*TPU, "ssh", "my-tpu", "--zone=us-central2-b", "--project=my-proj", "--worker=all"]
DRY_RUNS = {
    "create": (["create", "my-tpu", "us-central2-b", "v4-32"],
               [*TPU, "create", "my-tpu", "--zone=us-central2-b", "--project=my-proj",
                "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]),
    "create_v6e_spot": (["create", "my-tpu", "us-central2-b", "v6e-16", "--spot"],
                        [*TPU, "create", "my-tpu", "--zone=us-central2-b",
                         "--project=my-proj", "--accelerator-type=v6e-16",
                         "--version=v2-alpha-tpuv6e", "--spot"]),
    "create_version": (["create", "my-tpu", "us-central2-b", "v5litepod-8",
                        "--version=my-image"],
                       [*TPU, "create", "my-tpu", "--zone=us-central2-b",
                        "--project=my-proj", "--accelerator-type=v5litepod-8",
                        "--version=my-image"]),
    "setup": (["setup", "my-tpu", "us-central2-b", "https://github.com/me/transfusion_jax"],
              [*SSH, "--command=" + tpu_vm.remote_setup_script(
                  "https://github.com/me/transfusion_jax")]),
    "run": (["run", "my-tpu", "us-central2-b", "configs/quickstart.py", "gs://b/q",
             "--config.train.steps=5", "--config.note=a (b) 'c'"],
            [*SSH, "--command=" + tpu_vm.remote_run_script(
                [".venv/bin/python", "-m", "transfusion_jax.main",
                 "--config=configs/quickstart.py", "--workdir=gs://b/q",
                 "--config.train.steps=5", "--config.note=a (b) 'c'"],
                upload_log_to="gs://b/q/logs")]),
    "status": (["status", "my-tpu", "us-central2-b"],
               [*SSH, "--command=" + tpu_vm.remote_status_script()]),
    "logs": (["logs", "my-tpu", "us-central2-b", "--worker=0", "--lines=7"],
             [*SSH[:-1], "--worker=0", "--command=" + tpu_vm.remote_logs_script(7)]),
    "stop": (["stop", "my-tpu", "us-central2-b"],
             [*SSH, "--command=" + tpu_vm.remote_stop_script()]),
    "delete": (["delete", "my-tpu", "us-central2-b"],
               [*TPU, "delete", "my-tpu", "--zone=us-central2-b", "--project=my-proj",
                "--quiet"]),
}


@pytest.mark.parametrize("case", sorted(DRY_RUNS))
def test_dry_run_prints_the_gcloud_argv(case):
    argv, expected = DRY_RUNS[case]
    assert dry_run("--project=my-proj", *argv) == [expected]


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Cloud SDK is not installed")
@pytest.mark.parametrize("case", ["create_v6e_spot", "run", "logs", "delete"])
def test_gcloud_accepts_the_argv(case, tmp_path):
    """gcloud parses each argv and stops at authentication: an empty configuration, no
    metadata-server credentials and the TPU API pointed at a closed local port, so no
    command can reach a project."""
    _, argv = DRY_RUNS[case]
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("CLOUDSDK_", "GOOGLE_"))},
           "CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
           "CLOUDSDK_API_ENDPOINT_OVERRIDES_TPU": "http://127.0.0.1:9/",
           "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "do not currently have an active account" in proc.stderr, proc.stderr[-2000:]
    assert "unrecognized" not in proc.stderr and "argument" not in proc.stderr.lower()


def test_unknown_accelerator_is_one_error_line():
    proc = subprocess.run([str(ROOT / "launch" / "tpu_vm.sh"), "--dry-run", "create", "t",
                           "z", "v99-8"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "--version=IMAGE" in proc.stderr


def test_runtime_images():
    assert tpu_vm.runtime_image("v4-8") == "tpu-ubuntu2204-base"
    assert tpu_vm.runtime_image("v5litepod-16") == "v2-alpha-tpuv5-lite"
    assert tpu_vm.runtime_image("v5p-8") == "v2-alpha-tpuv5"
    assert tpu_vm.runtime_image("v6e-8") == "v2-alpha-tpuv6e"
