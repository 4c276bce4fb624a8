"""``python -m fastsmtp``: the ``fastsmtp`` command; see ``fastsmtp.cli``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
