"""Options of the chosen model and initializer: what is valid comes from the component itself.

``config.model.options`` are keyword arguments of the model's constructor
(``MODELS[name]``), ``config.init.options`` those of the initializer
(``INITIALIZERS[name]``; for a composition ``"a+b"`` one dict per name). The valid names,
their defaults and so their types are read from each function's signature, never from a
hand-kept list, so a new option is settable the moment a component grows one.

On the command line, ``--config.init.options.k=2`` and ``--config.model.options.width=0.5``
work like any other dotted override (`split_option_flags` takes them out of absl's hands,
`apply_option_flags` sets them once the config file and the other overrides have chosen the
component); a misspelt option is a `ConfigError` listing the valid options of that
component (`check_options`, also run on every config before training).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from transfusion_jax.config import ConfigError

# Constructor / strategy arguments that the trainer passes itself, not options.
_NOT_OPTIONS = {"model": ("num_classes", "dtype", "conv_impl"),
                "init": ("rng", "template", "source", "blocks")}
_FLAG = re.compile(r"^--?config\.(model|init)\.options\.([\w.]+)(?:=(.*))?$", re.DOTALL)
_REQUIRED = object()  # marks an option without a default


def _components(section: str) -> dict[str, Callable[..., Any]]:
    if section == "model":
        from transfusion_jax.models import MODELS

        return MODELS
    from transfusion_jax.init import INITIALIZERS

    return INITIALIZERS


def _kind(section: str) -> str:
    return "model" if section == "model" else "initializer"


def valid_options(section: str, name: str) -> dict[str, Any]:
    """``{option: default}`` of component ``name`` (``section`` = ``model`` or ``init``).

    Raises:
      ConfigError: ``name`` is no component of that section.
    """
    from transfusion_jax.config import check_choice

    components = _components(section)
    check_choice(f"{section}.name", name, components)
    params = inspect.signature(components[name]).parameters.values()
    return {p.name: (_REQUIRED if p.default is inspect.Parameter.empty else p.default)
            for p in params if p.name not in _NOT_OPTIONS[section]
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _steps(config: ml_collections.ConfigDict, section: str) -> list[tuple[str, str]]:
    """``[(component name, key prefix)]``: one component, or one per part of ``"a+b"``."""
    name = config[section].name
    if section == "init" and "+" in name:
        return [(n.strip(), f"{n.strip()}.") for n in name.split("+")]
    return [(name, "")]


def _unknown(section: str, name: str, key: str, options: dict[str, Any]) -> ConfigError:
    close = difflib.get_close_matches(key, list(options), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    valid = ", ".join(sorted(options)) or "none"
    return ConfigError(f"{section}.options.{key}: {_kind(section)} {name!r} has no option "
                       f"{key.rsplit('.', 1)[-1]!r}{hint}; its options: {valid}")


def check_options(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` for an option the chosen model or initializer does not take."""
    for section in ("model", "init"):
        options = dict(config[section].options)
        steps = _steps(config, section)
        for name, prefix in steps:
            valid = valid_options(section, name)
            own = options.get(name, {}) if prefix else options
            own = dict(own) if isinstance(own, dict | ml_collections.ConfigDict) else {}
            for key in own:
                if key not in valid:
                    raise _unknown(section, name, prefix + key, valid)


def split_option_flags(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Separates ``--config.{model,init}.options.KEY[=VALUE]`` flags from the others.

    Returns:
      ``(other_argv, [(section, dotted key, value text), ...])``; a flag without ``=``
      takes the next argument as its value (``--config.init.options.k 2``), or ``true``
      when none follows (a boolean switch).
    """
    rest, options = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        match = _FLAG.match(args[i])
        if not match:
            rest.append(args[i])
            i += 1
            continue
        section, key, value = match.groups()
        if value is None:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is not None and not following.startswith("-"):
                value, i = following, i + 1
            else:
                value = "true"
        options.append((section, key, value))
        i += 1
    return rest, options


def _parse(text: str, default: Any, flag: str) -> Any:
    """``text`` as the type of ``default`` (literal syntax for tuples and untyped options)."""
    try:
        if isinstance(default, bool):
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"expects true or false, got {text!r}")
            return lowered in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
        value = ast.literal_eval(text)
        if isinstance(default, tuple | list):
            if not isinstance(value, tuple | list):
                raise ValueError(f"expects a tuple such as {tuple(default)!r}, got {text!r}")
            return tuple(value)
        return value
    except (ValueError, SyntaxError) as e:
        if default is None or default is _REQUIRED:
            return text  # an untyped option given a plain word: keep the text
        raise ConfigError(f"flag {flag}={text}: {e}") from e


def apply_option_flags(config: ml_collections.ConfigDict,
                       flags: Sequence[tuple[str, str, str]]) -> None:
    """Sets the option flags of `split_option_flags` in ``config`` (in place).

    Each value is parsed as the type of the option's default in the component's signature
    (or of the value the config already holds).

    Raises:
      ConfigError: an option the component does not take (the message lists its options),
        or a value that does not parse as the option's type.
    """
    for section, key, text in flags:
        flag = f"--config.{section}.options.{key}"
        steps = dict(_steps(config, section))
        if section == "init" and "+" in config.init.name:
            part, _, leaf = key.partition(".")
            if part not in steps or not leaf or "." in leaf:
                raise ConfigError(
                    f"{flag}: init.name={config.init.name!r} composes {list(steps)}; set "
                    f"an option of one of them, e.g. --config.init.options."
                    f"{next(iter(steps))}.scheme=he_normal")
            name, target_key = part, leaf
        else:
            if "." in key:
                raise ConfigError(f"{flag}: {section}.options are flat (one level): "
                                  f"--config.{section}.options.NAME=VALUE")
            name, target_key = config[section].name, key
        valid = valid_options(section, name)
        if target_key not in valid:
            raise _unknown(section, name, key, valid)
        options = config[section].options
        if section == "init" and "+" in config.init.name:
            if name not in options:
                options[name] = ml_collections.ConfigDict()
            options = options[name]
        current = options.get(target_key, valid[target_key])
        value = _parse(text, current, flag)
        with options.unlocked():
            if target_key in options:
                del options[target_key]  # a new value may change the type (e.g. None -> tuple)
            options[target_key] = value
