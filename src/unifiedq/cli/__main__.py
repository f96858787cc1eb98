"""``python -m unifiedq.cli``: the same as the ``unifiedq`` command."""

import sys

from .dispatch import main

if __name__ == "__main__":
    sys.exit(main())
