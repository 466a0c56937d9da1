"""Builds librapa_ops with CMake (CMakeLists.txt) and puts it into the rapa package."""
import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = pathlib.Path(os.environ.get("RAPA_BUILD_DIR", ROOT / "build"))
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = ["cmake", "-S", str(ROOT), "-B", str(build_dir),
                     f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release"]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"] if not (build_dir / "CMakeCache.txt").exists() else []
        if "RAPA_CUDA" in os.environ:
            configure.append(f"-DRAPA_CUDA={os.environ['RAPA_CUDA']}")
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", str(build_dir), "--parallel",
                               str(os.cpu_count() or 2)])
        built = build_dir / "librapa_ops.so"
        target = pathlib.Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, target)


setup(ext_modules=[Extension("rapa.librapa_ops", sources=[])], cmdclass={"build_ext": CMakeBuild})
