"""spark-submit entry point for `sparkml-ext report`; takes the same options."""

import sys

from sparkml_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
