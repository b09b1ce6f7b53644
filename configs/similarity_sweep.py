"""Similarity sweep: every kept checkpoint x layer of a training run, compared.

Command (after ``configs/quickstart.py`` has trained a run into ``runs/single``; any
training run's workdir works, e.g. one run of a sweep, ``runs/quickstart/runs/init=...``):

    python -m transfusion_jax.main --config=configs/similarity_sweep.py \
        --workdir=runs/single_similarity --config.similarity.run_dir=runs/single

It restores the run's checkpoints (its step 0 is the initialisation), computes the
mean-pooled representations of 1,000 test images through all checkpoints in one vmapped
call per batch, streams them into exact full-data accumulators, and writes linear CKA and
SVCCA between every pair of (checkpoint, layer): ``similarity.npz``, ``similarity_pairs.csv``,
``to_init.csv`` and the figures ``to_init.png`` (each layer's similarity to its
initialisation over training), ``layers_final.png`` (layer x layer at the end) and
``checkpoints.png`` (step x step per layer). Expected on that run: higher layers
move furthest from their initialisation; CKA of each layer with itself along training
decreases with the step distance. Seconds on CPU.

Args (``:ARG``): none.
"""

from transfusion_jax.config import base_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/similarity_sweep.py takes no arg, got {arg!r}")
    c = base_config()
    c.job = "similarity"
    c.similarity.max_examples = 1000
    c.similarity.reduction = "mean_pool"
    return c
