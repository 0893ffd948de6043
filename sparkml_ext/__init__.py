"""sparkml_ext: Spark + Delta pipelines into MLlib and PyTorch DDP."""

__version__ = "0.1.0"
