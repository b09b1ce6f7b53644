"""Compare two models' representations layer by layer, from Python (notebooks, PyTorch users).

``compare(model_a, model_b, batches, layers)`` streams the batches through both models once,
reads the named layers (Flax models through their ``out`` dict or module paths, PyTorch
models through forward hooks, or any callable returning named activations) and returns a
`SimilarityMatrix` (rows: model A's layers, columns: model B's) with ``.plot()``. The math is
`transfusion_jax.similarity` (exact streaming accumulators, or the minibatch estimator);
this package only feeds it.

    import transfusion_jax as tfj   # the package is callable: tfj.compare(...) is compare(...)
    m = tfj.compare((model, variables_a), (model, variables_b), batches, ["block1", "block2"])
    m.values, m["block1", "block2"], m.plot()
"""

from transfusion_jax.callable_package import make_callable
from transfusion_jax.compare.adapters import Adapter, CallableModel, FlaxModel, as_adapter
from transfusion_jax.compare.api import ESTIMATORS, METHODS, compare
from transfusion_jax.compare.inputs import CompareError
from transfusion_jax.compare.result import SimilarityMatrix
from transfusion_jax.compare.torch_adapter import TorchModel  # torch loads only when used

make_callable(__name__, "transfusion_jax.compare.api:compare")

__all__ = [
    "ESTIMATORS",
    "METHODS",
    "Adapter",
    "CallableModel",
    "CompareError",
    "FlaxModel",
    "SimilarityMatrix",
    "TorchModel",
    "as_adapter",
    "compare",
]
