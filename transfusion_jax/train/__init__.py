"""Training: one run from its config to its checkpoints, metrics and summary.

``train_and_evaluate(config, workdir)`` (`loop`) is the whole job: it validates the config
and builds the run (`setup`: data, model, initialisation, optimizer), steps the jitted,
data-parallel train step (`step`, `state`, `losses`, `optim`), runs the configured
evaluators (`evaluators`: classification metrics, similarity to the initialisation, weight
change), tracks convergence (`convergence`), checkpoints with Orbax
(`transfusion_jax.checkpoints`), logs (`writer`, `progress`) and writes the curves and the
summary (`plots`, `summary`). Re-running on the same workdir resumes.

Reading a finished run needs none of this: `transfusion_jax.runs` opens it. Import the
modules themselves; this package imports none of them, so reading a config stays light.

The package is callable: ``transfusion_jax.train(config, workdir)`` is
`transfusion_jax.api.train` (a function and a subpackage cannot share the name otherwise).
"""

from transfusion_jax.callable_package import make_callable

make_callable(__name__, "transfusion_jax.api:train")
