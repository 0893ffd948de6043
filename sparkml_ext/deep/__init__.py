"""Torch side of the bridge: shard datasets, models, DDP training, checkpoints.

Runs inside TorchDistributor child processes and on GPU workers, so it never imports
pyspark: torch, pyarrow and numpy only.
"""
