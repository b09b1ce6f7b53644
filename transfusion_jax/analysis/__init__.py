"""What reads finished runs (import the modules themselves; this package imports nothing).

- `trajectory`: a run's checkpoints as one stacked pytree; `activations`: the model vmapped
  over stacked checkpoints; `stacked_similarity`: streamed CKA / SVCCA between them.
- `similarity_sweep` (+ `similarity_plots`): every checkpoint x layer of one run.
- `cross_run`: per-layer similarity between checkpoints of different runs.
- `weight_change` (+ `weight_change_plots`): parameter-space change per layer and filter.
- `max_activation` (+ `max_activation_compare`, `max_activation_plots`): top-k images per
  channel, overlap, class purity, dead channels.
- `filters`: first-layer filter grids; `feature_vis`: activation maximisation.
- `analyze` (+ `analyze_report`): the analyze job; `html_report`: HTML / Markdown pages.
"""
