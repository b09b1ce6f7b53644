"""Entry point: ``python -m transfusion_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR``.

Any config value can be overridden on the command line (``--config.train.steps=200``), the
chosen model's and initializer's options included (``--config.init.options.k=2``).
Problems a user can fix (a bad config file, key or value, a missing dataset, a bad weight
file, a damaged checkpoint, a full disk, a NaN loss) end the process with one
``error: ...`` line naming the fix and exit status 1 (`cli_errors`); everything is checked
before the job writes its first file. Real bugs keep their traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from transfusion_jax.api import setup_jax, setup_logging
from transfusion_jax.cli_errors import guarded


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
    from transfusion_jax.experiments.grid import require_sweep_dir
    from transfusion_jax.experiments.report import report_sweep

    require_sweep_dir(workdir)
    report_sweep(config, workdir)


def _analyze(config, workdir: str) -> None:
    from transfusion_jax.analysis.analyze import run_analysis

    run_analysis(config, workdir)


JOBS: dict[str, Callable] = {"train": _train, "similarity": _similarity, "sweep": _sweep,
                             "aggregate": _aggregate, "analyze": _analyze}


def run_job(config, workdir: str) -> None:
    """Runs ``JOBS[config.job]`` on a parsed, checked command line."""
    from transfusion_jax.config import check_choice

    check_choice("job", config.job, JOBS)
    if config.job == "sweep":
        from transfusion_jax.experiments.sweep import wanted_cpu_run_slots

        setup_jax(wanted_cpu_run_slots(config))
    else:
        setup_jax()
    JOBS[config.job](config, workdir)


def main(argv: list[str]) -> int:
    """The whole command line: parse and check ``argv``, run the job; the exit status.

    Every failure a user can cause is one ``error:`` line on stderr and status 1
    (`cli_errors.guarded`); a bug raises with its traceback.
    """
    from transfusion_jax.cli_flags import parse_command_line

    setup_logging()
    status, parsed = guarded(parse_command_line, list(argv))
    if status:
        return status
    status, _ = guarded(run_job, *parsed)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
