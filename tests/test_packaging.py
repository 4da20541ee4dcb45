"""The source distribution: what `python -m build --sdist` (or a `pip download` of it) gives, and
what a wheel is then built from, must hold every file the build and a user of the source need."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: tracked files an sdist leaves out on purpose: the CI script and git's own file
NOT_SHIPPED = {".ci/run", ".gitignore"}
#: what setuptools adds to an sdist beside the project's files
GENERATED = {"PKG-INFO", "setup.cfg"}


def checkout_files() -> list[str]:
    """The files a clean clone holds (tracked, as they are in the working tree, plus new ones not
    ignored): the sdist is built from a copy of these, never from a tree whose stale
    palmnode.egg-info/SOURCES.txt (an editable install's) would add files of its own."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, timeout=60, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the sdist is checked against the checkout's file list")
    return sorted(name for name in listed.decode().split("\0") if name and (ROOT / name).is_file())


def build_sdist(files: list[str], work: Path) -> Path:
    """The sdist the project's build backend (setuptools.build_meta, as `python -m build --sdist`
    calls it) makes from a copy of ``files``."""
    src = work / "src"
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    made = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as backend; "
                           "print(backend.build_sdist(sys.argv[1]))", str(work / "dist")],
                          cwd=src, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert made.returncode == 0, made.stderr[-3000:]
    return work / "dist" / made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tuple[Path, list[str]]:
    """The sdist of the checkout, and the checkout's file list."""
    files = checkout_files()
    return build_sdist(files, tmp_path_factory.mktemp("sdist")), files


def test_the_sdist_holds_every_file_a_wheel_is_built_from(sdist):
    """The sdist lacked native/build.py (setup.py's cffi_modules), the C header and
    config/sim.toml (shipped by setup.py as palmnode/sim.toml, the default config): `pip wheel`
    on it failed with "'native/build.py' does not name an existing file". It now holds every
    file of the checkout but the CI script, and nothing built (no .so, .o or .pyc)."""
    sdist, files = sdist
    with tarfile.open(sdist) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    top = sdist.name.removesuffix(".tar.gz") + "/"
    assert all(name.startswith(top) for name in names), names
    shipped = {name.removeprefix(top) for name in names}
    missing = sorted(set(files) - NOT_SHIPPED - shipped)
    assert not missing, f"not in the sdist: {missing}"
    for needed in ("LICENSE", "native/build.py", "native/palmnode_native.h", "native/gabor.c", "native/match.c",
                   "config/sim.toml", "setup.py", "pyproject.toml", "palmnode/biometrics/calibration.json"):
        assert needed in shipped
    extra = sorted(name for name in shipped - set(files) - GENERATED if not name.startswith("palmnode.egg-info/"))
    assert not extra, f"in the sdist but not in the checkout: {extra}"
    assert not [name for name in shipped if name.endswith((".so", ".o", ".pyc"))]


def test_a_wheel_builds_from_the_sdist_and_its_native_kernels_load(sdist, tmp_path):
    """What pip does with a downloaded sdist: unpack it and build a wheel (here without build
    isolation: the test extras hold the build requirements, so nothing is downloaded). The wheel
    holds the compiled kernels, the default config and the calibration, and they load."""
    sdist, files = sdist
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (source,) = (tmp_path / "unpacked").iterdir()
    made = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-cache-dir", "-w", str(tmp_path / "wheels"), str(source)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert made.returncode == 0, made.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("palmnode-*.whl")
    with zipfile.ZipFile(wheel) as zipped:
        names = set(zipped.namelist())
        zipped.extractall(tmp_path / "site")
    assert "palmnode/sim.toml" in names and "palmnode/biometrics/calibration.json" in names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: Apache-2.0" in (tmp_path / "site" / metadata).read_text().splitlines()
    assert [n for n in names if n.endswith(".dist-info/licenses/LICENSE")], sorted(names)
    assert [n for n in names if n.startswith("palmnode/_native") and n.endswith(".so")], sorted(names)
    packaged = {n for n in files if n.startswith(("palmnode/", "drivers/")) and n.endswith(".py")}
    assert packaged <= names, sorted(packaged - names)
    loaded = subprocess.run([sys.executable, "-c", "import palmnode.biometrics.kernels as k, palmnode.config as c; "
                             "print(k.__file__, c.PACKAGED_CONFIG.is_file())"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == [str(tmp_path / "site" / "palmnode" / "biometrics" / "kernels.py"), "True"]
