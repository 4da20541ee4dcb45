"""cffi API-mode build of the C kernels in this folder into ``palmnode._native``.

Run by setuptools during ``pip install`` (see setup.py); ``python native/build.py`` builds in place.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))

ffibuilder = FFI()
HEADER = (HERE / "palmnode_native.h").read_text()
ffibuilder.cdef(HEADER.split("cdef-begin", 1)[1].split("*/", 1)[1].split("/* cdef-end", 1)[0])
ffibuilder.set_source(
    "palmnode._native",
    '#include "palmnode_native.h"',
    sources=SOURCES,
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-O3", "-std=c99", "-fno-strict-aliasing", "-ffp-contract=off"],
    libraries=["m"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=True)
