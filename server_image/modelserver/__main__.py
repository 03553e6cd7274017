"""`python -m modelserver [serve|fetch] ...`: the image's entry point."""

import sys

from modelserver import cli

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
