"""tools/compare_native_code.py (`make compare-native`) on hand-made objects:
the same code compiled twice compares equal function by function, and a
function whose code a -march changes is found, while one it leaves alone is
not."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import compare_native_code  # noqa: E402

SOURCE = """
extern "C" int add_one(int x) { return x + 1; }
extern "C" float total(const float* a) { float s = 0; for (int i = 0; i < 256; ++i) s += a[i] * a[i]; return s; }
"""


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("objdump") is None, reason="needs g++ and objdump")
def test_functions_compare_by_machine_code(tmp_path):
    src = tmp_path / "f.cc"
    src.write_text(SOURCE)
    command = ["g++", "-O3", "-ffast-math", "-march=x86-64", "-MD", "-MT", "x.o", "-MF", "x.d", "-c", str(src),
               "-o", "placeholder.o"]
    objects = {}
    for name, march in (("base", "x86-64"), ("again", "x86-64"), ("v4", "x86-64-v4")):
        out = str(tmp_path / f"{name}.o")
        assert compare_native_code.build(command, march, out).wait() == 0
        objects[name] = compare_native_code.functions(out)
    base, again, v4 = objects["base"], objects["again"], objects["v4"]
    assert set(base) == {"add_one", "total"} and base == again
    assert v4["add_one"] == base["add_one"]
    # the vectorized sum of squares uses AVX-512 registers at v4 alone
    assert v4["total"] != base["total"]
    assert any("zmm" in line for line in v4["total"]) and not any("zmm" in line for line in base["total"])
    # the dependency-file arguments were dropped, not passed on
    assert not (tmp_path / "x.d").exists()
