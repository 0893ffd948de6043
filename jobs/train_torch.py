"""spark-submit entry point for `sparkml-ext train-torch`; takes the same options."""

import sys

from sparkml_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-torch", *sys.argv[1:]]))
