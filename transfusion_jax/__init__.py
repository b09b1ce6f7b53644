"""transfusion_jax: study what transfer learning transfers, fast, in JAX/Flax."""

__version__ = "0.1.0"
