"""Runs trained together: one compiled program for a whole group of runs of a study.

Runs that differ only in their seed, initialisation and learning-rate schedule values (see
`transfusion_jax.experiments.grouping`) stack their train states on a leading ``run`` axis
(params, BatchNorm statistics, optimizer state, step, PRNG key) and are stepped by one
jitted, ``vmap``-ped train step (`step`) on a 2-D ``runs`` x ``data`` mesh
(`transfusion_jax.parallel.grid_mesh`). Each run keeps what makes it itself: its
initialisation, its seed (model draws and dropout), its own data order (one input pipeline
per run, batches stacked), its learning rate (read from a per-run table of its own
schedule's values), its convergence record, and its workdir, where it writes exactly the
files a run trained alone writes (`member`): ``metrics.jsonl``, Orbax checkpoints with
step 0 kept, ``summary.json`` / ``.md`` and ``curves.png``. Evaluators run on every run in
one compiled pass (`transfusion_jax.train.evaluators.build_group_evaluators`).

A run whose loss becomes NaN or infinite stops updating (its step is masked on the device
from that step on) and is reported failed; the others go on. A group re-run after being cut
off resumes each run from its own newest checkpoint; runs that are ahead wait, masked, until
the others catch up (`loop`).
"""
