"""Training: setup, losses, optimiser, the one resumable loop, results, model sets, multi-task."""
