"""``python -m midvary``: the ``midvary`` command (see :mod:`midvary._cli`)."""

import sys

from midvary._cli import main

if __name__ == "__main__":
    sys.exit(main())
