"""The command line, parsed and checked before any job runs (and before anything is written).

``--config=path.py[:arg]`` is read by ml_collections' config flag (absl), with every
``--config.key=value`` override; this module adds, in order:

1. the config file itself is loaded once first (`config.load_config`), so a missing file,
   a syntax error, a file without ``get_config`` or an arg the file rejects is one
   `ConfigError` line instead of ml_collections' deferred or wrapped tracebacks;
2. ``--config.model.options.KEY`` and ``--config.init.options.KEY`` are set after the
   config and its other overrides have chosen the model and the initializer, typed by the
   component's own signature (`train.component_options`);
3. the workdir is checked: not a file, and writable (or creatable).

Each parse uses a fresh `absl.flags.FlagValues`, so the same function serves the real
command line and in-process callers (tests) alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from transfusion_jax.config import ConfigError
from transfusion_jax.paths import check_remote, is_remote

USAGE = ("usage: python -m transfusion_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR "
         "[--config.KEY=VALUE ...]")
_HELP = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def _config_spec(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config=X`` or ``--config X``), if any."""
    for i, arg in enumerate(argv):
        for prefix in ("--config=", "-config="):
            if arg.startswith(prefix):
                return arg[len(prefix):]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _flag_values(argv: list[str]) -> tuple[flags.FlagValues, flags.FlagHolder]:
    fv = flags.FlagValues()
    config = config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (.py), with an optional :ARG.",
        flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots.",
                        flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    return fv, config


def check_workdir(workdir: str) -> None:
    """Raises `ConfigError` unless ``workdir`` is a folder this process may write into (or
    create). Checked without writing anything; of a remote path (``gs://``) only that this
    process can use it (the ``[gcs]`` extra, credentials: `transfusion_jax.paths`).
    """
    if is_remote(workdir):
        check_remote(workdir)
        return
    path = Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir={workdir} is a file, not a folder: choose a folder "
                          "(it is created when absent)")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--workdir={workdir} cannot be created: {ancestor} is a file; "
                          "choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={workdir}: {ancestor} is not writable; choose a folder "
                          "you may write to, or change its permissions")


def parse_command_line(argv: list[str]) -> tuple[ml_collections.ConfigDict, str]:
    """``argv`` (program name first) -> ``(config, workdir)``, every input checked.

    Raises:
      ConfigError: a bad config file, key, value, option or workdir (one line).
      absl.flags.Error: a malformed or unknown flag, or a missing --config / --workdir.
      SystemExit: ``--help`` (status 0, after printing the usage).
    """
    program, args = argv[0], list(argv[1:])
    if any(a in _HELP for a in args):
        fv, _ = _flag_values([program])
        print(f"{USAGE}\n\n{fv.get_help()}")
        raise SystemExit(0)
    from transfusion_jax.train.component_options import apply_option_flags, split_option_flags

    args, option_flags = split_option_flags(args)
    spec = _config_spec(args)
    if spec is None:
        raise ConfigError(f"--config is missing; {USAGE}")
    if not any(a.startswith(("--workdir", "-workdir")) for a in args):
        raise ConfigError(f"--workdir is missing; {USAGE}")
    from transfusion_jax.config import load_config

    load_config(spec)  # a bad file is one ConfigError here, not a deferred traceback
    fv, config_holder = _flag_values([program, *args])
    try:
        rest = fv([program, *args])
    except flags.Error:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        from transfusion_jax.config_files import config_key_problem

        raise ConfigError(f"bad --config override: {config_key_problem(e)}; the valid keys "
                          "are those of transfusion_jax.config.base_config()") from e
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(rest[1:])}; {USAGE}")
    config = config_holder.value
    apply_option_flags(config, option_flags)
    workdir = fv["workdir"].value
    check_workdir(workdir)
    return config, workdir
