"""spark-submit entry point for `sparkml-ext train-mllib`; takes the same options."""

import sys

from sparkml_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-mllib", *sys.argv[1:]]))
