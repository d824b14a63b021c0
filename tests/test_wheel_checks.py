"""tools/check_wheel.py, the check CI runs on the wheel, against hand-made wheels
and sdists: it accepts a well-formed one and refuses each defect it is meant
to catch. (`make test-wheel` runs it on the real wheel.)"""

import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import check_wheel  # noqa: E402

GOOD_TAG = "cp311-cp311-manylinux_2_35_x86_64"
GOOD_PIN = 'tensorflow<2.22,>=2.21; extra == "tensorflow"'


def make_wheel(tmp_path, tag=GOOD_TAG, pin=GOOD_PIN, license_="Apache-2.0", extra_files=(),
               license_file=True, requires_python=">=3.10"):
    path = tmp_path / f"fastiou-0.1.0-{tag}.whl"
    meta = ["Metadata-Version: 2.4", "Name: fastiou", "Version: 0.1.0"]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    if license_:
        meta.append(f"License: {license_}")
    meta += ["Requires-Dist: keras>=3.10", "Requires-Dist: numpy"]
    if pin:
        meta.append(f"Requires-Dist: {pin}")
    meta.append('Requires-Dist: jax>=0.5; extra == "jax"')
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fastiou/__init__.py", "")
        z.writestr("fastiou/_fastiou_ops.so", b"\x7fELF")
        z.writestr("fastiou/_fastiou_kernels.cpython-311-x86_64-linux-gnu.so", b"\x7fELF")
        z.writestr("fastiou-0.1.0.dist-info/METADATA", "\n".join(meta) + "\n")
        z.writestr("fastiou-0.1.0.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
        if license_file:
            z.writestr("fastiou-0.1.0.dist-info/licenses/LICENSE", "Apache License 2.0")
        for name in extra_files:
            z.writestr(name, b"")
    return path


def test_a_well_formed_wheel_passes(tmp_path):
    check_wheel.check_wheel(make_wheel(tmp_path), "2.21.0")


@pytest.mark.parametrize("defect, kwargs, message", [
    ("not repaired", dict(tag="cp311-cp311-linux_x86_64"), "not tagged manylinux"),
    ("no Requires-Python", dict(requires_python=None), "Requires-Python"),
    ("another license", dict(license_="MIT"), "not Apache-2.0"),
    ("no license file", dict(license_file=False), "no LICENSE"),
    ("a bundled library", dict(extra_files=["fastiou.libs/libtensorflow_framework-1a2b.so.2"]), "bundled"),
    ("no TensorFlow pin", dict(pin=None), "expected one tensorflow requirement"),
    ("a pin without an upper bound", dict(pin='tensorflow>=2.21; extra == "tensorflow"'), "admits TensorFlow 2.22.0"),
    ("a pin of one release", dict(pin='tensorflow==2.21.1; extra == "tensorflow"'), "refuses TensorFlow 2.21.0"),
    ("a pin of another version", dict(pin='tensorflow<2.21,>=2.20; extra == "tensorflow"'), "refuses TensorFlow 2.21.0"),
    ("a hard TensorFlow dependency", dict(pin="tensorflow<2.22,>=2.21"), "expected one tensorflow requirement"),
])
def test_each_defect_is_refused(tmp_path, defect, kwargs, message):
    with pytest.raises(check_wheel.WheelError, match=message):
        check_wheel.check_wheel(make_wheel(tmp_path, **kwargs), "2.21.0")


def test_the_wheel_must_carry_both_libraries(tmp_path):
    path = make_wheel(tmp_path)
    stripped = tmp_path / "stripped" / path.name
    stripped.parent.mkdir()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            if not item.filename.startswith("fastiou/_fastiou_ops"):
                dst.writestr(item, src.read(item))
    with pytest.raises(check_wheel.WheelError, match="_fastiou_ops.so"):
        check_wheel.check_wheel(stripped, "2.21.0")


def make_sdist(tmp_path, names):
    path = tmp_path / "fastiou-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        for name in names:
            info = tarfile.TarInfo(f"fastiou-0.1.0/{name}")
            info.size = 0
            t.addfile(info, io.BytesIO(b""))
    return path


def test_the_sdist_must_hold_the_build_sources(tmp_path):
    check_wheel.check_sdist(make_sdist(tmp_path, check_wheel.SDIST_NEEDS))
    with pytest.raises(check_wheel.WheelError, match="csrc/cpu/overlap_cpu.cc"):
        check_wheel.check_sdist(make_sdist(tmp_path, [n for n in check_wheel.SDIST_NEEDS
                                                      if n != "csrc/cpu/overlap_cpu.cc"]))


def test_the_repo_sdist_list_names_real_files():
    # The sdist check asks for files the repository has (a renamed source would
    # otherwise make every sdist fail, or a stale name pass unnoticed).
    assert all((REPO / n).is_file() for n in check_wheel.SDIST_NEEDS)
