"""What reads finished runs: checkpoint trajectories, activations of stacked checkpoints,
similarity sweeps and their plots."""
