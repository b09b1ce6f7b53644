"""Entry point: ``python -m transfusion_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR``.

Any config value can be overridden on the command line (``--config.train.steps=200``).
Problems a user can fix (a bad config key or value, a missing dataset, a NaN loss) end the
process with one ``error: ...`` line naming the fix and exit status 1.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

from transfusion_jax.api import setup_jax, setup_logging

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots.")
flags.mark_flags_as_required(["config", "workdir"])


def _train(config, workdir: str) -> None:
    from transfusion_jax.train.loop import train_and_evaluate

    train_and_evaluate(config, workdir)


def _similarity(config, workdir: str) -> None:
    from transfusion_jax.analysis.similarity_job import run_similarity_job

    run_similarity_job(config, workdir)


def _sweep(config, workdir: str) -> None:
    from transfusion_jax.experiments.sweep import run_sweep

    run_sweep(config, workdir)


def _aggregate(config, workdir: str) -> None:
    from transfusion_jax.experiments.report import report_sweep

    report_sweep(config, workdir)


def _analyze(config, workdir: str) -> None:
    from transfusion_jax.analysis.analyze import run_analysis

    run_analysis(config, workdir)


JOBS: dict[str, Callable] = {"train": _train, "similarity": _similarity, "sweep": _sweep,
                             "aggregate": _aggregate, "analyze": _analyze}


def _user_errors() -> tuple[type[BaseException], ...]:
    from transfusion_jax.config import ConfigError
    from transfusion_jax.data import DataError
    from transfusion_jax.similarity import SimilarityInputError
    from transfusion_jax.train.loop import NonFiniteLossError
    from transfusion_jax.weights import WeightMismatchError

    return (ConfigError, DataError, NonFiniteLossError, WeightMismatchError,
            SimilarityInputError)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    setup_logging()
    config = _CONFIG.value
    from transfusion_jax.config import check_choice

    try:
        check_choice("job", config.job, JOBS)
        setup_jax()
        JOBS[config.job](config, _WORKDIR.value)
    except _user_errors() as e:
        sys.exit(f"error: {e}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with config errors (unknown key, bad value) as one-line errors."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections reports a misspelt key as AttributeError("'key'\nDid you mean ...").
        raw = str(e.args[0] if e.args else e)
        key = re.search(r"'([\w.]+)", raw)
        hint = re.search(r'Did you mean "[^"]+"', raw)
        what = f"unknown config key {key.group(1)!r}" if key else raw
        sys.exit(f"error: bad config or --config override: {what}"
                 + (f" ({hint.group(0)}?)" if hint else "")
                 + "; the valid keys are those of transfusion_jax.config.base_config()")

if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
