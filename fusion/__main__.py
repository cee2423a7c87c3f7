"""``python -m fusion``: the same as the ``fusion`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # doctest collection imports this module too
    sys.exit(main())
