"""``python -m unifiedq.bench``: the same as ``unifiedq bench``."""

import sys

from ..cli.bench import bench_main

if __name__ == "__main__":
    sys.exit(bench_main(prog="python -m unifiedq.bench"))
