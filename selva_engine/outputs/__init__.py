"""Files a run writes and the readers of them: step checkpoints, plots, meta.json, samples."""
