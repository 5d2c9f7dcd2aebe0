"""``python -m mpidl.train``: the command line (mpidl.cli)."""

import sys

from mpidl.cli import main

if __name__ == "__main__":
    sys.exit(main())
