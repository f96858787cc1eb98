"""Build hook for the one compiled module; everything else is declared in pyproject.toml.

``unifiedq.drivers._shmring`` is the compiled fast path of the ``shm://`` ring. It is
optional: where it cannot be compiled (no C compiler, non-GCC/Clang toolchain) the install
still succeeds and the driver runs its pure-Python path (see docs/drivers/shm.md).

``UNIFIEDQ_REQUIRE_EXT=1`` makes the module required instead: ``scripts/build_wheels.sh`` sets
it, so that a wheel is never published without the compiled path.
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "unifiedq.drivers._shmring",
            ["src/unifiedq/drivers/_shmring.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
            optional=os.environ.get("UNIFIEDQ_REQUIRE_EXT") != "1",
        )
    ]
)
