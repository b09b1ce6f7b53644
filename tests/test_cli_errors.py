"""Bad input through the command line: one ``error:`` line, exit status 1, workdir untouched.

Every row of `CASES` is one mistake a user can make, with the message it must produce. All
rows run in-process through `transfusion_jax.main.main`, the function the command line
runs (the same parsing, checks and error boundary); the rows marked ``cli`` also run as a
real subprocess in the default suite, and every row does with ``-m slow``. Each asserts:
exactly one stderr line starting ``error:`` containing the expected text, no traceback,
status 1, and the workdir untouched (still absent, or byte-identical).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, cli_env, tree_snapshot

SMOKE = "configs/quickstart.py:smoke"


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
      id: the test id.
      args: extra arguments; ``{name}`` placeholders are files of the `inputs` fixture.
      expected: text the error line must contain (placeholders allowed).
      config: the ``--config`` value (placeholders allowed).
      workdir: ``new`` (a path that does not exist), ``run`` (a copy of a finished run),
        ``damaged`` (a run whose newest checkpoint's data is truncated), ``sweepless`` (an
        empty folder), ``file``, ``below_file`` (a path through a file), ``readonly``, or
        ``none`` (no --workdir flag).
      cli: also run as a subprocess in the default suite.
    """

    id: str
    args: tuple[str, ...]
    expected: str
    config: str = SMOKE
    workdir: str = "new"
    cli: bool = False


CASES = [
    # The config file and the command line.
    Case("config_file_missing", (), "config file configs/nope.py does not exist",
         config="configs/nope.py", cli=True),
    Case("config_file_misspelt", (), "(did you mean configs/quickstart.py?)",
         config="configs/quickstar.py"),
    Case("config_syntax_error", (), "config file {syntax} line 2: syntax error",
         config="{syntax}", cli=True),
    Case("config_without_get_config", (), "defines no get_config(arg=None) function",
         config="{no_get_config}"),
    Case("config_not_python", (), "config file README.md is not a Python file",
         config="README.md"),
    Case("config_arg_rejected", (), "config file configs/quickstart.py rejected its arg 'bogus'",
         config="configs/quickstart.py:bogus"),
    Case("config_file_sets_unknown_key", (),
         "line 5: unknown config key 'stpes' (did you mean 'steps'?)", config="{typo}"),
    Case("workdir_flag_missing", (), "--workdir is missing", workdir="none"),
    Case("unknown_flag", ("--wokdir=x",), "Unknown command line flag 'wokdir'"),
    Case("unexpected_argument", ("extra",), "unexpected arguments: extra"),
    Case("unknown_config_key", ("--config.train.stpes=5",),
         "unknown config key 'stpes' (did you mean 'steps'?)", cli=True),
    Case("value_of_wrong_type", ("--config.train.steps=abc",),
         "--config.train.steps=abc: invalid literal for int()"),
    Case("model_option_misspelt", ("--config.model.options.widht=0.5",),
         "model 'cbr_tiny' has no option 'widht' (did you mean 'width'?); its options: "
         "channels, kernel, pool_after, width"),
    Case("init_option_misspelt", ("--config.init.name=transfusion",
                                  "--config.init.options.kk=2"),
         "initializer 'transfusion' has no option 'kk' (did you mean 'k'?); its options: k, "
         "scheme", cli=True),
    Case("init_option_not_a_number", ("--config.init.name=transfusion",
                                      "--config.init.options.k=two"),
         "--config.init.options.k=two: invalid literal for int()"),
    Case("model_name", ("--config.model.name=resnet5",),
         "model.name='resnet5' is not valid (did you mean 'resnet50'?); choose one of:"),
    Case("optimizer_name", ("--config.train.optimizer.name=adamw",),
         "train.optimizer.name='adamw' is not valid (did you mean 'adam'?)"),
    Case("init_name", ("--config.init.name=meanvar",), "init.name='meanvar' is not valid"),
    Case("job_name", ("--config.job=trian",), "job='trian' is not valid (did you mean 'train'?)"),
    Case("batch_size_zero", ("--config.train.batch_size=0",),
         "train.batch_size=0 must be a positive number"),
    Case("freeze_matches_nothing", ("--config.train.freeze=^nope/",),
         "learning-rate rules ['^nope/'] match no parameter"),
    Case("freeze_bad_regex", ("--config.train.freeze=(",), "train.freeze: bad regex '('"),
    # The workdir.
    Case("workdir_is_a_file", (), "is a file, not a folder", workdir="file", cli=True),
    Case("workdir_below_a_file", (), "cannot be created", workdir="below_file"),
    Case("workdir_not_writable", (), "is not writable", workdir="readonly"),
    # Data.
    Case("dataset_not_prepared", ("--config.data.name=cifar10",),
         "dataset 'cifar10' is not prepared: tfds looked in"),
    Case("split_unknown", ("--config.data.eval_split=validation",),
         "dataset 'mnist5k' has no split 'validation'"),
    Case("subset_larger_than_split", ("--config.data.train_examples=99999",),
         "data.train_examples=99999 but split 'train' of 'mnist5k' has only 4000 examples"),
    Case("label_transform_unknown", ("--config.data.label_transform=refrable_dr",),
         "refrable_dr"),
    Case("image_folder_csv_missing", ("--config.data.name=image_folder",
                                      "--config.data.folder.root={no_csv_folder}"),
         "image_folder: labels CSV"),
    Case("image_folder_lists_a_non_image", ("--config.data.name=image_folder",
                                            "--config.data.folder.root={folder}",
                                            "--config.data.train_examples=0"),
         "are missing or not images, e.g. {folder}/notes.png (not an image", cli=True),
    # Initialisation sources.
    Case("source_not_set", ("--config.init.name=pretrained",),
         "init.name='pretrained' needs pretrained weights: set init.source"),
    Case("source_missing", ("--config.init.name=pretrained",
                            "--config.init.source={tmp}/absent.npz"),
         "init.source='{tmp}/absent.npz' does not exist"),
    Case("source_pth_truncated", ("--config.init.name=pretrained",
                                  "--config.init.source={truncated_pth}"),
         "is truncated, damaged or not a torch checkpoint"),
    Case("source_pth_pickled_model", ("--config.init.name=pretrained",
                                      "--config.init.source={model_pth}"),
         "refusing to load torchvision.models.resnet.ResNet"),
    Case("source_with_nan", ("--config.init.name=pretrained",
                             "--config.init.source={nan_npz}"),
         "holds NaN or infinite values in 1 tensor(s): params/block1/bn/bias"),
    Case("source_does_not_fit", ("--config.init.name=pretrained",
                                 "--config.init.source={short_npz}"),
         "weights do not match the model (1 problem):"),
    Case("source_run_not_finished", ("--config.init.name=pretrained",
                                     "--config.init.source={unfinished}"),
         "is a run that has not finished: its newest checkpoint is step 0 of 12", cli=True),
    Case("source_run_step_not_kept", ("--config.init.name=pretrained",
                                      "--config.init.source={run}@5"),
         "step 5 is not a kept checkpoint of that run; its steps: 0, 8, 12"),
    # Resuming a run with settings that change what its saved state means.
    Case("resume_larger_batch", ("--config.train.batch_size=32",),
         "train.batch_size was 16, now 32", workdir="run", cli=True),
    Case("resume_smaller_batch", ("--config.train.batch_size=8",),
         "train.batch_size was 16, now 8", workdir="run"),
    Case("resume_other_subset", ("--config.data.train_examples=128",),
         "data.train_examples was 256, now 128", workdir="run"),
    Case("resume_other_subset_seed", ("--config.data.subset_seed=3",),
         "data.subset_seed was 0, now 3", workdir="run"),
    Case("resume_other_shuffle_seed", ("--config.seed=1",), "seed was 0, now 1", workdir="run"),
    Case("resume_other_optimizer", ("--config.train.optimizer.name=adam",),
         "train.optimizer.name was 'sgd', now 'adam'", workdir="run"),
    Case("resume_damaged_checkpoint", ("--config.train.steps=16",),
         "checkpoint step 12 in {workdir}/checkpoints cannot be read, it is damaged or "
         "incomplete", workdir="damaged", cli=True),
    # The other jobs.
    Case("similarity_without_run", (), "similarity.run_dir must name a training run's workdir",
         config="configs/similarity_sweep.py"),
    Case("similarity_on_damaged_checkpoint", ("--config.similarity.run_dir={damaged}",),
         "checkpoint step 12 in {damaged}/checkpoints cannot be read",
         config="configs/similarity_sweep.py"),
    Case("aggregate_on_a_single_run", ("--config.job=aggregate",),
         "job=aggregate needs a sweep's workdir; {workdir} is a single training run",
         workdir="run", cli=True),
    Case("aggregate_on_an_empty_folder", ("--config.job=aggregate",),
         "job=aggregate needs a sweep's workdir (runs/*/sweep_run.json)", workdir="sweepless"),
    Case("analyze_without_run", (), "analysis.after must name a training run",
         config="configs/analyze.py:smoke"),
    Case("analyze_not_a_run", ("--config.analysis.after={tmp}",), "is not a training run's",
         config="configs/analyze.py:smoke"),
]


def _torch_zip(path: Path, pickled: bytes, *, truncate: int = 0) -> Path:
    """A zip-format ``.pth`` whose ``data.pkl`` is ``pickled``; cut to ``truncate`` bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickled)
        zf.writestr("archive/version", "3\n" + "x" * 4000)
    if truncate:
        path.write_bytes(path.read_bytes()[:truncate])
    return path


# What ``torch.save(model)`` pickles for a whole torchvision ResNet, reduced to its head:
# protocol 2, GLOBAL torchvision.models.resnet.ResNet, an empty argument tuple, NEWOBJ, STOP.
# Written by hand so that nothing is imported to build it.
PICKLED_MODEL = b"\x80\x02ctorchvision.models.resnet\nResNet\n)\x81."


def _damage(run: Path, step: int) -> None:
    """Truncates every array data file of ``step`` (a disk error, a half-copied folder)."""
    for f in (run / "checkpoints" / str(step) / "state").rglob("d/*"):
        f.write_bytes(f.read_bytes()[:20])


@pytest.fixture(scope="module")
def inputs(finished_run, tmp_path_factory) -> dict[str, str]:
    """The bad files and runs the cases name."""
    from transfusion_jax.weights import flatten, read_orbax_variables, save_npz

    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "syntax.py").write_text("from transfusion_jax.config import base_config\n"
                                   "def get_config(arg=None:\n    return base_config()\n")
    (tmp / "no_get_config.py").write_text("CONFIG = {}\n")
    (tmp / "typo.py").write_text("from transfusion_jax.config import base_config\n\n\n"
                                 "def get_config(arg=None):\n    c = base_config(); "
                                 "c.train.stpes = 5\n    return c\n")
    folder = tmp / "folder"
    folder.mkdir()
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    (folder / "notes.png").write_text("not an image\n")
    (folder / "labels.csv").write_text("image,label,split\na.png,x,train\nnotes.png,y,train\n"
                                       "b.png,x,test\n")
    (tmp / "no_csv").mkdir()
    variables = read_orbax_variables(finished_run / "checkpoints" / "12")
    flat = {k: np.asarray(v) for k, v in flatten(variables).items()}
    nan = dict(flat)
    nan["params/block1/bn/bias"] = nan["params/block1/bn/bias"].copy()
    nan["params/block1/bn/bias"][0] = np.nan
    save_npz(tmp / "nan.npz", nan)
    save_npz(tmp / "short.npz", {k: v for k, v in flat.items() if k != "params/head/bias"})
    unfinished = tmp / "unfinished"
    shutil.copytree(finished_run, unfinished)
    for step in ("8", "12"):  # killed after step 0
        shutil.rmtree(unfinished / "checkpoints" / step)
    damaged = tmp / "damaged"
    shutil.copytree(finished_run, damaged)
    _damage(damaged, 12)
    return {"tmp": str(tmp), "syntax": str(tmp / "syntax.py"),
            "no_get_config": str(tmp / "no_get_config.py"), "typo": str(tmp / "typo.py"),
            "folder": str(folder), "no_csv_folder": str(tmp / "no_csv"),
            "truncated_pth": str(_torch_zip(tmp / "cut.pth", pickle.dumps({"w": 1}),
                                            truncate=300)),
            "model_pth": str(_torch_zip(tmp / "model.pth", PICKLED_MODEL)),
            "nan_npz": str(tmp / "nan.npz"), "short_npz": str(tmp / "short.npz"),
            "unfinished": str(unfinished), "run": str(finished_run), "damaged": str(damaged)}


def _workdir(kind: str, tmp_path: Path, finished_run: Path, inputs: dict) -> Path | None:
    workdir = tmp_path / "workdir"
    if kind in ("run", "damaged"):
        shutil.copytree(finished_run if kind == "run" else inputs["damaged"], workdir)
    elif kind == "sweepless":
        workdir.mkdir()
    elif kind == "file":
        workdir.write_text("a file where the workdir should be\n")
    elif kind == "below_file":
        (tmp_path / "a_file").write_text("x\n")
        workdir = tmp_path / "a_file" / "run"
    elif kind == "readonly":
        if os.geteuid() == 0:  # root writes through permission bits; procfs refuses it
            return Path("/proc/self/tfj_workdir")
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        workdir = folder / "run"
    elif kind == "none":
        return None
    return workdir


def _argv(case: Case, workdir: Path | None, data_dir: str, inputs: dict) -> list[str]:
    names = {**inputs, "workdir": str(workdir)}
    argv = ["transfusion_jax.main", f"--config={case.config.format(**names)}"]
    if workdir is not None:
        argv.append(f"--workdir={workdir}")
    argv += [f"--config.data.data_dir={data_dir}", "--config.log.tensorboard=False",
             *(a.format(**names) for a in case.args)]
    return argv


def _check(case: Case, status: int, stderr: str, workdir: Path | None, before, inputs):
    names = {**inputs, "workdir": str(workdir)}
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 1, stderr[-3000:]
    assert len(errors) == 1, stderr[-3000:]
    assert case.expected.format(**names) in errors[0], errors[0]
    assert "Traceback" not in stderr, stderr[-3000:]
    if workdir is not None:
        assert tree_snapshot(workdir) == before, "the workdir was touched"


class _StderrAtEmit(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged: the test's captured stream,
    which pytest swaps in only for the test's call, after the fixtures' setup."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@pytest.fixture
def project_log_to_captured_stderr():
    """The project's log lines go to the (captured) stderr of this test, then back."""
    project, absl_logger = logging.getLogger("transfusion_jax"), logging.getLogger("absl")
    handlers, level = list(project.handlers), absl_logger.level
    project.handlers = [_StderrAtEmit()]
    yield
    project.handlers = handlers
    absl_logger.setLevel(level)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case, data_dir, finished_run, inputs, tmp_path, capsys,
                              project_log_to_captured_stderr):
    from transfusion_jax.main import main

    workdir = _workdir(case.workdir, tmp_path, finished_run, inputs)
    before = tree_snapshot(workdir) if workdir is not None else None
    status = main(_argv(case, workdir, data_dir, inputs))
    _check(case, status, capsys.readouterr().err, workdir, before, inputs)


def _subprocess(case, data_dir, finished_run, inputs, tmp_path):
    workdir = _workdir(case.workdir, tmp_path, finished_run, inputs)
    before = tree_snapshot(workdir) if workdir is not None else None
    argv = [sys.executable, "-m", *_argv(case, workdir, data_dir, inputs)]
    proc = subprocess.run(argv, cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    _check(case, proc.returncode, proc.stderr, workdir, before, inputs)


CLI = [c for c in CASES if c.cli]


@pytest.mark.parametrize("case", CLI, ids=[c.id for c in CLI])
def test_bad_input_through_the_real_command_line(case, data_dir, finished_run, inputs,
                                                 tmp_path):
    _subprocess(case, data_dir, finished_run, inputs, tmp_path)


REST = [c for c in CASES if not c.cli]


@pytest.mark.slow
@pytest.mark.parametrize("case", REST, ids=[c.id for c in REST])
def test_every_bad_input_through_the_real_command_line(case, data_dir, finished_run, inputs,
                                                       tmp_path):
    _subprocess(case, data_dir, finished_run, inputs, tmp_path)


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.args, c.config, c.workdir) for c in CASES}) == len(CASES)
