"""spark-submit entry point for `sparkml-ext publish-online`; takes the same options."""

import sys

from sparkml_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish-online", *sys.argv[1:]]))
