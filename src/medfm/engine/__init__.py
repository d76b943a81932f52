"""The one training loop every medfm stage reuses: schedules, hooks, checkpoints, DDP, resumable data."""
