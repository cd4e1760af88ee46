"""Training: options, the step, the run state and its phases, checkpointing, the trainer."""
