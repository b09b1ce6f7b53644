"""Analysis: what fine-tuning changed between two checkpoints (weights, features, images).

Command (e.g. after ``configs/recipe_art.py:double``, whose ``intermediate`` stage fine-tunes
the ImageNet EfficientNet-Lite0 on Fashion-MNIST):

    python -m transfusion_jax.main --config=configs/analyze.py --workdir=runs/analysis \
        --config.analysis.after=runs/double/stages/intermediate

``analysis.before`` defaults to the after run at step 0 (its initialisation: the ImageNet
weights, with the new head left out of the weight comparison). Writes ``report.html`` with
per-layer and per-filter weight change, per-layer CKA/SVCCA along training, maximal
activation images (top-100 overlap, class purity, dead channels) with image grids, conv1
filters and feature visualisations of the channels that changed most; ``timings.json``
holds the seconds each analysis took. Add runs to compare with
``--config.analysis.baselines='("runs/other_seed",)'``.

Args: ``smoke`` (tiny sizes, for tests).
"""

from transfusion_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.job = "analyze"
    c.analysis.top_k = (100,)
    c.analysis.max_examples = 2000
    c.analysis.feature_vis_steps = 256
    c.analysis.feature_vis_size = 64
    c.analysis.feature_vis_channels = 4
    if arg == "smoke":
        c.analysis.top_k = (8,)
        c.analysis.max_examples = 64
        c.analysis.channels_shown = 2
        c.analysis.feature_vis_steps = 8
        c.analysis.feature_vis_size = 16
        c.analysis.feature_vis_channels = 2
        c.similarity.batch_size = 32
        c.similarity.bootstrap, c.similarity.null = 8, 4  # intervals exercised, cheaply
    elif arg:
        raise ValueError(f"configs/analyze.py takes no arg or 'smoke', got {arg!r}")
    return c
