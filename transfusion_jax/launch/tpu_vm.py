"""Cloud TPU VM slices: create one, install the project on every worker, run a job on all
of them so that it outlives the ssh session, watch it, stop it, delete the slice.

::

    launch/tpu_vm.sh create NAME ZONE ACCELERATOR [--version=V] [--spot]
    launch/tpu_vm.sh setup  NAME ZONE REPO_URL [--ref=BRANCH_OR_COMMIT]
    launch/tpu_vm.sh run    NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
    launch/tpu_vm.sh status NAME ZONE
    launch/tpu_vm.sh logs   NAME ZONE [--lines=N] [--worker=all|I]
    launch/tpu_vm.sh stop   NAME ZONE
    launch/tpu_vm.sh delete NAME ZONE

(``launch/tpu_vm.sh`` runs ``python3 -m transfusion_jax.launch.tpu_vm``.) ``--dry-run`` and
``--project=P`` go before the subcommand; ``--dry-run`` prints each ``gcloud`` command, one
shell-quoted line, instead of running it.

- ``create`` runs ``gcloud compute tpus tpu-vm create`` with the runtime image Google lists
  for JAX on that TPU generation (`RUNTIME_IMAGES`: ``tpu-ubuntu2204-base`` for v2-v4,
  ``v2-alpha-tpuv5-lite`` for v5e, ``v2-alpha-tpuv5`` for v5p, ``v2-alpha-tpuv6e`` for v6e).
  These images are Ubuntu 22.04, whose Python is 3.10, and none is documented with a Python
  that meets the project's 3.11+. So the Python does not come from the image:
- ``setup`` installs uv on every worker (``--worker=all``) if it is missing, lets it bring
  a CPython 3.12 (``uv venv --python 3.12``; uv downloads a standalone build when the
  image has none), clones the repository to ``~/transfusion_jax`` and installs the project
  with its ``[gcs]`` extra and ``jax[tpu]`` into ``~/transfusion_jax/.venv``. This works on
  any image.
- ``run`` starts ``python -m transfusion_jax.main --config=CONFIG --workdir=WORKDIR ...``
  in ``~/transfusion_jax`` on every worker, detached (``nohup setsid``: an ssh drop does
  not stop it), with ``TFJ_DISTRIBUTED=auto`` (JAX finds the slice's coordinator itself:
  ``jax.distributed.initialize()`` with no arguments) and ``TFJ_EXPECT_ACCELERATOR=1`` (a
  JAX that finds no TPU stops with an ``error:`` line instead of training on the CPU). The
  output goes to ``~/tfj_runs/run-<UTC time>.log`` on each worker (``~/tfj_runs/run.log``
  points to the newest); with a ``gs://`` WORKDIR the log is copied to
  ``WORKDIR/logs/<worker hostname>.log`` when the run ends. Every worker must see the same
  WORKDIR: use ``gs://``. A worker with a run still going refuses a second one (a TPU
  serves one process).
- ``status`` prints, for each worker, whether the run is going (or its exit status) and the
  last log lines; ``logs`` the log's tail; ``stop`` ends the run (its process group).

The arguments after WORKDIR reach the job exactly as given: `remote_run_script` quotes
every word with `shlex.quote` for the worker's shell (tests run the script through
``bash -c`` with spaces, quotes, parentheses, ``$``, backslashes and empty strings). This
module uses the standard library only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

REMOTE_REPO = "~/transfusion_jax"
"""Where `setup` clones the project on every worker (the run's working directory)."""
RUN_DIR = "~/tfj_runs"
"""Per-worker folder of the run's log, pid and exit-status files."""
PYTHON = "3.12"
"""The CPython version `setup` asks uv for."""
RUN_ENV = {"TFJ_DISTRIBUTED": "auto", "TFJ_EXPECT_ACCELERATOR": "1"}
"""Set for every job `run` starts."""

RUNTIME_IMAGES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base",
                  "v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
                  "v5e": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                  "v6e": "v2-alpha-tpuv6e"}
"""Accelerator-type prefix -> the TPU software version Google lists for JAX."""


class LaunchError(ValueError):
    """A launcher argument that cannot work (the message names the fix)."""


def runtime_image(accelerator: str) -> str:
    """The runtime image for an accelerator type such as ``v4-32`` or ``v5litepod-16``.

    Raises:
      LaunchError: an unknown generation (pass ``--version`` then).
    """
    generation = accelerator.split("-")[0].lower()
    if generation not in RUNTIME_IMAGES:
        raise LaunchError(f"no default runtime image for accelerator type {accelerator!r} "
                          f"(known: {', '.join(sorted(RUNTIME_IMAGES))}); pass --version=IMAGE")
    return RUNTIME_IMAGES[generation]


def _run_file(name: str) -> str:
    """A file of `RUN_DIR` as a shell word (``~`` left to expand, the rest fixed)."""
    return f"{RUN_DIR}/{name}"


def remote_run_script(command: Sequence[str], env: Mapping[str, str] = RUN_ENV,
                      cwd: str = REMOTE_REPO, upload_log_to: str | None = None) -> str:
    """The shell script that starts ``command`` detached on one worker.

    The script is one string in POSIX sh (bash or dash), parsed once by the worker's login
    shell: what ``gcloud ... ssh --command=SCRIPT`` runs (gcloud splits it at spaces, ssh
    joins the words with spaces again). Every word of ``command`` and every value of ``env``
    is quoted with `shlex.quote`, so the program receives exactly ``command`` as its argv,
    whatever characters the words hold. The program runs under ``nohup setsid``, its
    output in ``~/tfj_runs/run-<UTC time>.log`` (``run.log`` links to it), its pid in
    ``run.pid`` and, when it ends, its exit status in ``run.exit``; a worker whose last run
    is still going refuses to start another.

    Args:
      command: the program and its arguments, as ``subprocess`` would take them.
      env: environment variables set for the program.
      cwd: the folder it runs in (``~`` expands; other characters are taken literally).
      upload_log_to: a ``gs://`` folder: the log is copied there as ``<hostname>.log`` when
        the program ends (``gcloud storage cp``).

    Returns:
      The script (a few lines of POSIX sh).
    """
    if not command:
        raise LaunchError("nothing to run: the command is empty")
    upload = ""
    if upload_log_to:
        target = shlex.quote(upload_log_to.rstrip("/") + "/")
        upload = (f'gcloud storage cp "$log" {target}"$(hostname).log" >/dev/null 2>&1 '
                  f'|| echo "could not copy the log to "{target} >&2; ')
    # The detached shell runs the program, records its exit status, copies the log. The
    # program and its arguments reach it as positional parameters ("$@"): quoted once.
    inner = (f'"$@"; status=$?; echo $status > {_run_file("run.exit")}; '
             f'echo "exit status $status" >&2; {upload}exit $status')
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    home_cwd = cwd[2:] if cwd.startswith("~/") else None
    cd = f'cd "$HOME"/{shlex.quote(home_cwd)}' if home_cwd else f"cd {shlex.quote(cwd)}"
    return (
        "set -e\n"
        f"mkdir -p {RUN_DIR}\n"
        f"if [ -f {_run_file('run.pid')} ] && kill -0 \"$(cat {_run_file('run.pid')})\" "
        "2>/dev/null; then\n"
        f"  echo \"error: $(hostname): a run is still going (pid $(cat {_run_file('run.pid')})"
        "); wait for it or stop it (launch/tpu_vm.sh stop)\" >&2; exit 1\n"
        "fi\n"
        f"{cd}\n"
        f"{exports}"
        f"log={RUN_DIR}/run-$(date -u +%Y%m%dT%H%M%SZ).log\n"
        f"rm -f {_run_file('run.exit')}\n"
        f"ln -sfn \"$log\" {_run_file('run.log')}\n"
        f"export log\n"
        f"nohup setsid bash -c {shlex.quote(inner)} tfj-run {shlex.join(command)} "
        "> \"$log\" 2>&1 < /dev/null &\n"
        f"echo $! > {_run_file('run.pid')}\n"
        "echo \"$(hostname): started pid $!, log $log\"\n"
    )


def remote_status_script(lines: int = 5) -> str:
    """Shell script: whether this worker's run is going (or how it ended), and the log's
    last ``lines`` lines."""
    pid, exit_file, log = _run_file("run.pid"), _run_file("run.exit"), _run_file("run.log")
    return (
        "h=$(hostname)\n"
        f"if [ ! -f {pid} ]; then echo \"$h: no run started\"; exit 0; fi\n"
        f"if [ -f {exit_file} ]; then "
        f"echo \"$h: finished, exit status $(cat {exit_file}), log $(readlink {log})\"\n"
        f"elif kill -0 \"$(cat {pid})\" 2>/dev/null; then "
        f"echo \"$h: running (pid $(cat {pid})), log $(readlink {log})\"\n"
        f"else echo \"$h: not running, no exit status (killed?), log $(readlink {log})\"; fi\n"
        f"tail -n {int(lines)} {log} | sed \"s/^/$h| /\"\n"
    )


def remote_logs_script(lines: int = 50, follow: bool = False) -> str:
    """Shell script: the tail of this worker's newest run log, lines prefixed by hostname."""
    follow_flag = " -F" if follow else ""
    log = _run_file("run.log")
    return (f"h=$(hostname); if [ ! -e {log} ]; then echo \"$h: no run log\"; exit 0; fi\n"
            f"tail -n {int(lines)}{follow_flag} {log} | sed -u \"s/^/$h| /\"\n")


def remote_stop_script() -> str:
    """Shell script: ends this worker's run (its whole process group: `run` starts it under
    ``setsid``), with ``/bin/kill`` (dash's own ``kill`` takes no process group)."""
    pid = _run_file("run.pid")
    return (f"h=$(hostname); if [ -f {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then "
            f"env kill -s TERM -- -\"$(cat {pid})\" && echo \"$h: stopped pid $(cat {pid})\"; "
            "else echo \"$h: no run going\"; fi\n")


def remote_setup_script(repo: str, ref: str | None = None, extras: str = "gcs",
                        python: str = PYTHON) -> str:
    """Shell script: uv (if missing), a CPython ``python`` venv, the project cloned (or
    updated) at ``~/transfusion_jax`` and installed with ``[extras]`` and ``jax[tpu]``."""
    repo_q = shlex.quote(repo)
    checkout = f"git checkout {shlex.quote(ref)}\n" if ref else ""
    return (
        "set -eu\n"
        'export PATH="$HOME/.local/bin:$PATH"\n'
        "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh\n"
        f'if [ -d "$HOME"/transfusion_jax/.git ]; then git -C "$HOME"/transfusion_jax fetch '
        f"--all --tags; else git clone {repo_q} \"$HOME\"/transfusion_jax; fi\n"
        'cd "$HOME"/transfusion_jax\n'
        f"{checkout}git pull --ff-only 2>/dev/null || true  # a branch: its newest commit\n"
        f"uv venv --allow-existing --python {shlex.quote(python)} .venv\n"
        f"uv pip install --python .venv/bin/python -e {shlex.quote(f'.[{extras}]')} "
        "'jax[tpu]'\n"
        ".venv/bin/python -c 'import sys, jax, transfusion_jax; "
        "print(\"python\", sys.version.split()[0], \"jax\", jax.__version__)'\n"
    )


def _tpu(subcommand: str, name: str, zone: str, project: str | None) -> list[str]:
    """``gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone=ZONE [--project=P]``."""
    argv = ["gcloud", "compute", "tpus", "tpu-vm", subcommand, name, f"--zone={zone}"]
    return argv + ([f"--project={project}"] if project else [])


def ssh_argv(name: str, zone: str, script: str, project: str | None = None,
             worker: str = "all") -> list[str]:
    """``gcloud ... ssh`` running ``script`` on ``worker`` (default every worker): the
    script is one argv element, which the worker's shell parses."""
    return _tpu("ssh", name, zone, project) + [f"--worker={worker}", f"--command={script}"]


def job_command(config: str, workdir: str, flags: Sequence[str],
                python: str = ".venv/bin/python") -> list[str]:
    """The training command `run` starts on each worker (run from ``~/transfusion_jax``)."""
    return [python, "-m", "transfusion_jax.main", f"--config={config}",
            f"--workdir={workdir}", *flags]


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The gcloud command lines (argv lists) of a parsed launcher command line."""
    name, zone, project = args.name, args.zone, args.project
    if args.subcommand == "create":
        argv = _tpu("create", name, zone, project) + [
            f"--accelerator-type={args.accelerator}",
            f"--version={args.version or runtime_image(args.accelerator)}"]
        return [argv + (["--spot"] if args.spot else [])]
    if args.subcommand == "setup":
        return [ssh_argv(name, zone, remote_setup_script(args.repo, args.ref), project)]
    if args.subcommand == "run":
        upload = args.workdir if args.workdir.startswith("gs://") else None
        if upload is None:
            print(f"warning: workdir {args.workdir!r} is not gs://: each worker writes its own "
                  "disk and the logs stay on the workers; a slice needs a gs:// workdir",
                  file=sys.stderr)
        upload = upload and upload.rstrip("/") + "/logs"
        script = remote_run_script(job_command(args.config, args.workdir, args.flags),
                                   upload_log_to=upload)
        return [ssh_argv(name, zone, script, project)]
    if args.subcommand == "status":
        return [ssh_argv(name, zone, remote_status_script(args.lines), project)]
    if args.subcommand == "logs":
        script = remote_logs_script(args.lines, args.follow)
        return [ssh_argv(name, zone, script, project, worker=args.worker)]
    if args.subcommand == "stop":
        return [ssh_argv(name, zone, remote_stop_script(), project)]
    if args.subcommand == "delete":
        return [_tpu("delete", name, zone, project) + ["--quiet"]]
    raise LaunchError(f"unknown subcommand {args.subcommand!r}")


def parser() -> argparse.ArgumentParser:
    """The launcher's command line."""
    top = argparse.ArgumentParser(
        prog="launch/tpu_vm.sh", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--dry-run", action="store_true",
                     help="print the gcloud commands (shell-quoted) instead of running them")
    top.add_argument("--project", help="Google Cloud project (default: gcloud's)")
    sub = top.add_subparsers(dest="subcommand", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("name", help="the TPU VM's name")
        p.add_argument("zone", help="its zone, e.g. us-central2-b")
        return p

    p = add("create", "create the TPU VM slice")
    p.add_argument("accelerator", help="accelerator type, e.g. v4-32, v5litepod-16, v6e-8")
    p.add_argument("--version", help="runtime image (default: Google's JAX image for the "
                   "accelerator's generation)")
    p.add_argument("--spot", action="store_true", help="a Spot (preemptible) slice")
    p = add("setup", "install Python 3.12, jax[tpu] and the project on every worker")
    p.add_argument("repo", help="git URL of this project (your fork)")
    p.add_argument("--ref", help="branch, tag or commit to check out (default: the "
                   "default branch, pulled)")
    p = add("run", "start a job on every worker, detached")
    p.add_argument("config", help="configs/NAME.py[:ARG], relative to the repository")
    p.add_argument("workdir", help="the run's folder, shared by every worker: gs://BUCKET/...")
    p.add_argument("flags", nargs=argparse.REMAINDER,
                   help="further flags for transfusion_jax.main, passed as given")
    p = add("status", "is the run going on each worker; its last log lines")
    p.add_argument("--lines", type=int, default=5)
    p = add("logs", "the tail of the run's log")
    p.add_argument("--lines", type=int, default=50)
    p.add_argument("--follow", action="store_true", help="keep printing (tail -F)")
    p.add_argument("--worker", default="all", help="all (default), or a worker index")
    add("stop", "end the run on every worker")
    add("delete", "delete the TPU VM slice")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv``, then runs (or with ``--dry-run`` prints) each gcloud command.

    Returns:
      0, or the first failing gcloud command's exit status (1 for a bad argument).
    """
    args = parser().parse_args(argv)
    try:
        lines = commands(args)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for argv_ in lines:
        if args.dry_run:
            print(shlex.join(argv_))
            continue
        status = subprocess.call(argv_)
        if status:
            return status
    if args.subcommand == "run" and not args.dry_run:
        print(f"started; follow it with: launch/tpu_vm.sh logs {args.name} {args.zone} "
              f"--follow (each worker's log is {RUN_DIR}/run.log)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
