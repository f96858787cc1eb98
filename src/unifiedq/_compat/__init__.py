"""One module per third-party library whose private internals we use.

Each lists them and its verified version range, pinned by tests/test_compat.py.
"""
