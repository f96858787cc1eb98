"""``python -m unifiedq.bench``: the same as ``unifiedq bench``."""

import sys

from .command import bench_main

if __name__ == "__main__":
    sys.exit(bench_main(prog="python -m unifiedq.bench"))
