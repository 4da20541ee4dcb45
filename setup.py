# The C kernels in native/ are compiled by cffi (API mode) as part of every install.
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
