"""Torch side of the bridge: shard datasets, models, DDP training, checkpoints.

Runs inside TorchDistributor child processes and on GPU workers, so it never imports
pyspark: torch, pyarrow and numpy only. This file imports nothing, so that the Spark
side can use `sparkml_ext.deep.manifest` and `sparkml_ext.deep.config` (the ranks' knobs)
without torch installed; import the modules themselves: `config.TrainConfig`,
`dataset.ShardDataset`, `train.train_worker`, `model.load_model`, ...
"""
