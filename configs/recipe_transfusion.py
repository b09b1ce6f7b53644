"""Recipe 1, Transfusion offline: does pretraining speed up convergence, and is it reuse?

Command (from the repository root; the README's quickstart is the ``quick`` arg):

    python -m transfusion_jax.main --config=configs/recipe_transfusion.py:quick \
        --workdir=runs/quickstart

A sweep (``job = sweep``). First a *source* model is trained (stage ``source``): a slim
CBR-Tiny on scikit-learn's digits (``quick``, ``digits``) or on Fashion-MNIST (default; the
Debian ``dataset-fashion-mnist`` package). Then the same architecture is trained on the
*target* task, MNIST-5k (4,000 training images), from each initialisation, over seeds; the
runs of a study differ only in init and seed, so on a GPU or TPU they train together as one
compiled program (``sweep.vectorize``'s default ``auto``; on a CPU side by side, one per
core, which is faster there):

- ``quick``: random, pretrained, mean_var; seeds 0-7 (24 runs); 100 steps of 32 images;
  test accuracy every 5 steps; threshold 95%. Budgeted for 10 minutes on 2 CPU cores
  (below); measured 4 min 55 s from a fresh clone (2 cores, install excluded, runs side by
  side; 8 min 5 s with ``--config.sweep.vectorize=True``, measured before the in-memory
  batches, side by side and the faster report, when one after another took 7 min 44 s).
- default / ``digits``: random, pretrained, mean_var, transfusion k = 1..3 (blocks 1..k
  pretrained), shuffled (pretrained values permuted per tensor) and gabor (synthetic conv1);
  seeds 0-2; 400 steps, evaluated every 25.

How ``quick`` spends its budget. On 2 CPU cores this model trained at about 425 examples/s
with XLA's own convolutions when the budget was set (about 800 with ``model.conv_impl``'s
``auto`` since; 480 for 8 runs together in the matrix-product form that vectorised groups use
on CPU), so a 10-minute study holds about 250k training examples,
evaluation included (a forward pass costs about a third of a training step). Spent: the
source, 150 steps of 64 digits (9.6k; it reaches ~97% test accuracy); the targets, 24 runs
x 100 steps x 32 images (77k; batch 32 gives twice the updates of 64 for the same
examples); the main evaluation, every 5 steps on the first 256 test images, 24 x 20 x 256
forward passes (~41k training-example equivalents; 256 images resolve accuracy to 0.4%,
and every run is measured on the same ones); the learning dynamics (similarity to init and
weight change, every 25 steps on 256 images, ~10k). About 140k in all, leaving the rest for
compilation, the runs' summaries and plots, and the report. Input 28x28 and width 0.25
(channels 16-32-64-128), as in the single-run quickstart: smaller would be cheaper but a
different model. A learning rate of 0.02 (not 0.05) keeps test accuracy from swinging
between evaluations, so that the first step at 95% is a property of the run, not of one
noisy evaluation.

Pretrained-style inits keep the new head random (``dont_load = ^head/``). Everything else
(data, schedule, batches) is identical across inits, and run seeds fix both the random draws
and the data order. Outputs in the workdir: ``report.html`` / ``report.md`` (which init
reached 95% test accuracy fastest, by how much, with bootstrap intervals over seeds),
``aggregate/`` (tables and convergence curves with bands), ``similarity/`` (per-layer CKA
of each trained model to its own init and to the others), ``filters/`` (conv1 per init),
and one training workdir per run under ``runs/``. Re-running the command skips finished
runs. What to expect is what Transfusion reports, in kind: transfer mostly speeds up
convergence rather than final accuracy, and lower layers move least from their init.

Args: ``quick`` | ``digits`` | ``fashion`` (default) | ``smoke`` (seconds; tests).
"""

from pathlib import Path

from transfusion_jax.config import base_config
from transfusion_jax.experiments.grid import init_variants
from transfusion_jax.train.evaluators import evaluator

HERE = Path(__file__).resolve()


def _cbr(c):
    c.model.name = "cbr_tiny"
    c.model.options.width = 0.25  # channels 16-32-64-128: a slim CBR-Tiny for CPU
    c.data.image_size, c.data.channels, c.data.normalize = 28, 1, "zero_one"
    c.train.batch_size = 64
    c.train.optimizer.name, c.train.optimizer.momentum = "sgd", 0.9
    c.train.schedule.name, c.train.schedule.base_lr = "cosine", 0.05
    c.train.schedule.warmup_steps = 25
    c.train.weight_decay = 5e-4
    c.log.every_steps = 50
    return c


def source_config(dataset: str, steps: int):
    """The source model: the same architecture trained on ``dataset`` (a stage)."""
    c = _cbr(base_config())
    c.seed = 1000  # not a target run's seed: its random init must not equal a target's
    c.data.name = dataset
    c.train.steps = steps
    c.eval.every_steps = steps // 2
    c.checkpoint.every_steps, c.checkpoint.keep_last = steps, 1
    return c


def get_config(arg: str | None = None):
    arg = arg or "fashion"
    if arg not in ("quick", "digits", "fashion", "smoke", "source_quick", "source_digits",
                   "source_fashion", "source_smoke"):
        raise ValueError(f"configs/recipe_transfusion.py takes quick, digits, fashion or "
                         f"smoke; got {arg!r}")
    if arg.startswith("source_"):
        kind = arg.removeprefix("source_")
        c = source_config("fashion_mnist" if kind == "fashion" else "digits",
                          {"smoke": 8, "quick": 150, "digits": 300, "fashion": 600}[kind])
        if kind == "smoke":
            c.model.options.width = 0.125
            c.train.batch_size, c.data.train_examples = 16, 256
            c.data.eval_split, c.eval.batch_size = "test[:64]", 32
            c.log.every_steps = 4
        return c

    c = _cbr(base_config())
    c.job = "sweep"
    c.data.name = "mnist5k"
    c.train.steps = 400
    c.eval.every_steps = 25
    # Learning dynamics, logged live: each block's CKA with its own init, and weight change.
    c.evals.similarity_to_init = evaluator("similarity_to_init", every_steps=25, examples=512)
    c.evals.weight_change = evaluator("weight_change", every_steps=25)
    c.convergence.metric, c.convergence.threshold = "accuracy", 0.95
    c.checkpoint.every_steps, c.checkpoint.keep_last = 100, 1
    c.sweep.stages = (("source", f"{HERE}:source_{arg}"),)
    names = ["random", "pretrained", "mean_var", "transfusion:1", "transfusion:2",
             "transfusion:3", "shuffled", "gabor"]
    c.sweep.seeds = (0, 1, 2)
    c.sweep.baseline = "random"
    if arg in ("quick", "smoke"):
        names = ["random", "pretrained", "mean_var"]
        c.sweep.seeds = (0, 1)
    c.sweep.axes.init = init_variants(names, source="@source")
    c.similarity.max_examples = 1000
    if arg == "quick":  # the budget is spent as the docstring says
        c.sweep.seeds = tuple(range(8))
        c.train.steps, c.train.batch_size = 100, 32
        c.train.schedule.base_lr, c.train.schedule.warmup_steps = 0.02, 10
        c.data.eval_split, c.eval.every_steps = "test[:256]", 5
        c.evals.similarity_to_init.update(examples=256)
        c.checkpoint.every_steps = 50
        c.log.every_steps = 25
        c.similarity.max_examples = 500
    if arg == "smoke":
        c.model.options.width = 0.125
        c.train.steps, c.train.batch_size, c.train.schedule.warmup_steps = 12, 16, 2
        c.data.train_examples = 256
        c.data.eval_split, c.eval.batch_size, c.eval.every_steps = "test[:64]", 32, 4
        c.evals.similarity_to_init.update(every_steps=4, examples=32, batch_size=16)
        c.evals.weight_change.every_steps = 4
        c.convergence.threshold = 0.3
        c.checkpoint.every_steps = 6
        c.log.every_steps = 4
        c.similarity.max_examples = 64
        c.similarity.bootstrap, c.similarity.null = 8, 4  # intervals exercised, cheaply
    return c
