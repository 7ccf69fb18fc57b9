"""``python -m ppp_zoo.cli``: the ``ppp-zoo`` command line."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
