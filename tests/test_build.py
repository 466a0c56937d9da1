"""How the operator library is linked: against the very C++ runtime that torch uses."""
import pathlib
import shutil
import subprocess

import pytest
import torch

from rapa import _library


def needed(path) -> set[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True)
    return {line.split("[", 1)[1].split("]", 1)[0] for line in out.stdout.splitlines()
            if "(NEEDED)" in line}


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")
def test_library_shares_torchs_cpp_runtime():
    # A static copy of libstdc++ beside torch's crashed at the first error message it formatted.
    torch_lib = pathlib.Path(torch.__file__).parent / "lib" / "libc10.so"
    runtime = {n for n in needed(torch_lib) if n.startswith(("libstdc++", "libc++"))}
    assert runtime, f"{torch_lib} names no C++ runtime"
    assert runtime <= needed(_library.library_path()), (
        f"{_library.library_path()} does not load {runtime} as torch does: it holds its own copy")
