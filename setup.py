# The C kernels in native/ are compiled by cffi (API mode) as part of every install.
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: the default config (`palmnode run` without --config); config/sim.toml stays its one source
SIM_CONFIG = Path("config") / "sim.toml"


class BuildPyWithSimConfig(build_py):
    """Also ship config/sim.toml as palmnode/sim.toml, so an installed (non-editable) palmnode has
    its default config (palmnode.config.load_default); a checkout reads config/sim.toml itself."""

    def run(self) -> None:
        super().run()
        if not SIM_CONFIG.is_file():  # an install without the default config would fail only at `palmnode run`
            raise FileNotFoundError(f"{SIM_CONFIG} is missing: build palmnode from a full checkout")
        package = Path(self.build_lib) / "palmnode"
        self.mkpath(str(package))  # an editable build copies no module there, so it may not exist
        self.copy_file(str(SIM_CONFIG), str(package / "sim.toml"))


# cffi builds the kernels against the stable ABI (_native.abi3.so): one wheel serves every CPython >= 3.11
setup(cffi_modules=["native/build.py:ffibuilder"], cmdclass={"build_py": BuildPyWithSimConfig},
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
