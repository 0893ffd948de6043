"""spark-submit entry point for `sparkml-ext score`; takes the same options."""

import sys

from sparkml_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
