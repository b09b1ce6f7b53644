"""What reads finished runs (import the modules themselves; this package imports nothing).

Runs are read through `transfusion_jax.runs` (config, model, kept steps, variables); nothing
here imports `transfusion_jax.train`.

- `activations`: the model vmapped over stacked checkpoints;
  `checkpoint_similarity`: the one checkpoint-similarity pipeline (named checkpoints of one
  architecture, stacked; streamed CKA / SVCCA between their layers), `similarity_files` and
  `similarity_plots` its files and figures.
- `similarity_job`: the similarity job, every checkpoint x layer of one run.
- `weight_change` (+ `weight_change_plots`): parameter-space change per layer and filter.
- `max_activation` (+ `max_activation_compare`, `max_activation_plots`): top-k images per
  channel, overlap, class purity, dead channels.
- `filters`: first-layer filter grids; `feature_vis`: activation maximisation.
- `analyze` (+ `analyze_report`): the analyze job; `html_report`: HTML / Markdown pages.
"""
