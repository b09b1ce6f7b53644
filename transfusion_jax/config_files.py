"""Reading experiment config files (``path/to/config.py[:arg]``) with one-line errors.

A config file is user code: a missing file, a syntax error, a file without ``get_config``,
an arg the file rejects or a misspelt key of the locked base config is a mistake the user
fixes in that file, so each becomes one `ConfigError` naming the file, the line and the
problem. An exception raised inside this project's own code (called from the file) is not
converted: it is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import traceback
from pathlib import Path
from types import TracebackType

import ml_collections

from transfusion_jax.config import ConfigError

# ml_collections raises these for a misspelt key of a locked ConfigDict (or a bad value).
_KEY_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def config_key_problem(error: BaseException) -> str:
    """One line for ml_collections' errors about a key or value of a locked config.

    ``AttributeError('\\'stpes\\'\\nDid you mean "steps" instead of "stpes"?')`` becomes
    ``unknown config key 'stpes' (did you mean 'steps'?)``; other messages keep their first
    line.
    """
    inner: object = error
    while isinstance(inner, BaseException) and inner.args:
        inner = inner.args[0]  # ml_collections wraps a KeyError in an AttributeError
    raw = str(inner)
    hint = re.search(r'Did you mean "([^"]+)"', raw)
    key = re.search(r"""^(?:Key )?['"]([\w.]+)['"]""", raw.strip())
    if isinstance(error, AttributeError | KeyError) and key:
        return (f"unknown config key {key.group(1)!r}"
                + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
    return " ".join(raw.split())


def _nearby(path: Path) -> str:
    """`` (did you mean configs/x.py?)`` when a sibling file has a close name."""
    folder = path.parent if path.parent.is_dir() else None
    if folder is None:
        return ""
    names = [p.name for p in folder.glob("*.py")]
    close = difflib.get_close_matches(path.name, names, n=1)
    return f" (did you mean {folder / close[0]}?)" if close else ""


def _line_in(tb: TracebackType | None, path: Path) -> int | None:
    """The line of the innermost frame of ``tb`` that runs ``path``, or None."""
    line = None
    for frame in traceback.extract_tb(tb):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return line


def _raised_in_project(tb: TracebackType | None, path: Path) -> bool:
    """Whether the innermost frame outside ml_collections is this project's code (a bug)
    rather than the config file itself."""
    package = Path(__file__).resolve().parent
    for frame in reversed(traceback.extract_tb(tb)):
        where = Path(frame.filename).resolve()
        if "ml_collections" in where.parts:
            continue
        return where != path.resolve() and package in where.parents
    return False


def _user_error(path: Path, spec: str, error: BaseException) -> ConfigError:
    line = _line_in(error.__traceback__, path)
    where = f"config file {spec}" + (f" line {line}" if line else "")
    if isinstance(error, ConfigError):
        return ConfigError(f"{where}: {error}")
    if isinstance(error, _KEY_ERRORS) and "ml_collections" in "".join(
            f.filename for f in traceback.extract_tb(error.__traceback__)):
        return ConfigError(f"{where}: {config_key_problem(error)}; the valid keys are those "
                           "of transfusion_jax.config.base_config()")
    message = " ".join(str(error).split()) or type(error).__name__
    return ConfigError(f"{where}: {type(error).__name__}: {message}")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` exactly as ``--config=`` does.

    ``get_config()`` is called without an argument when ``spec`` has no ``:``, and with the
    text after the first ``:`` otherwise (as ml_collections' config flag does).

    Args:
      spec: ``path/to/config.py`` or ``path/to/config.py:arg``.

    Returns:
      The `ml_collections.ConfigDict` that ``get_config`` returns.

    Raises:
      ConfigError: one line naming the file, the line where known, and the problem.
    """
    path_text, colon, arg = spec.partition(":")
    if not path_text:
        raise ConfigError("--config needs a config file: --config=configs/NAME.py[:ARG]")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ConfigError(f"config file {path_text} does not exist{_nearby(path)}")
    if not path.is_file() or path.suffix != ".py":
        raise ConfigError(f"config file {path_text} is not a Python file: give a .py file "
                          "with a get_config(arg=None) function")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path_text} line {e.lineno}: syntax error: "
                          f"{e.msg}") from e
    except Exception as e:
        if _raised_in_project(e.__traceback__, path):
            raise
        raise _user_error(path, path_text, e) from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path_text} defines no get_config(arg=None) function "
                          "returning an ml_collections.ConfigDict")
    try:
        config = get_config(arg) if colon else get_config()
    except Exception as e:
        if _raised_in_project(e.__traceback__, path) and not isinstance(e, ConfigError):
            raise
        frames = traceback.extract_tb(e.__traceback__)
        raised_by_file = bool(frames) and Path(frames[-1].filename).resolve() == path.resolve()
        if colon and raised_by_file and isinstance(e, ValueError) and not isinstance(
                e, ConfigError):
            raise ConfigError(f"config file {path_text} rejected its arg {arg!r}: "
                              f"{' '.join(str(e).split())}") from e
        raise _user_error(path, path_text, e) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path_text}: get_config returned "
                          f"{type(config).__name__}, not an ml_collections.ConfigDict")
    return config
