"""The per-job driver and its process: batch outcomes, checkpoints, launching, liveness."""
