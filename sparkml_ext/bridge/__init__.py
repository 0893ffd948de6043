"""Spark side of the deep path: Arrow shard export, DDP launching, torch models on executors.

The torch side (`sparkml_ext.deep`) never sees a DataFrame: it gets a manifest path and
its knobs (`deep.config.TrainConfig`), and reads the shards itself.
"""

from sparkml_ext.bridge.export import export_shards, export_table
from sparkml_ext.bridge.launch import Attempt, LaunchFailed, LaunchResult, launch, pick_backend

__all__ = [
    "Attempt",
    "LaunchFailed",
    "LaunchResult",
    "export_shards",
    "export_table",
    "launch",
    "pick_backend",
]
