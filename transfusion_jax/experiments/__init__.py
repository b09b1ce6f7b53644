"""Experiments: sweeps over init x model x seed, and their aggregation with intervals.

- `grid`: the runs a sweep config expands into (axes x seeds, stages).
- `sweep`: the sweep job (train every run, skip finished ones, resume cut-off ones).
- `stats`: bootstrap intervals, censored steps-to-threshold (restricted mean, Kaplan-Meier
  median), paired speed-ups.
- `aggregate`, `aggregate_text`, `aggregate_plots`: per-group statistics of a sweep folder
  and its CSV / Markdown / JSON files and figures.
- `group_similarity`: per-layer CKA of the trained models to their inits and each other.
- `report`: the sweep's HTML / Markdown report.

Import the modules themselves (``from transfusion_jax.experiments.stats import ...``): this
package imports nothing, so reading a sweep config does not load JAX or matplotlib.
"""
