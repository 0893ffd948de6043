"""spark-submit entry point for `sparkml-ext ingest`; takes the same options."""

import sys

from sparkml_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
