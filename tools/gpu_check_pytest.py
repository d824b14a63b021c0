"""pytest plugin of the device check (tools/gpu_check.py runs pytest with
`-p gpu_check_pytest`): the test modules run as on the GPU machine, which has
no TensorFlow, wherever they run.

- TensorFlow is unimportable in the test process: `import tensorflow` raises
  ModuleNotFoundError, `importlib.util.find_spec("tensorflow")` says None, so
  fastiou loads no TensorFlow side and `pytest.importorskip` skips. A dry run
  on a machine that has TensorFlow then takes the GPU machine's paths.
- tests/test_jax.py imports MODES and mask_sized_work from tests/test_xla.py,
  a module of TensorFlow tests that imports TensorFlow first. The plugin gives
  it a `test_xla` module holding test_xla.py's own top-level definitions that
  run without TensorFlow (its imports, constants and helpers; not its tests),
  read from that file, so nothing is copied.
"""

import ast
import sys
import types
from pathlib import Path

sys.modules["tensorflow"] = None

_loaded = []


def tensorflow_free_module(path, name):
    """The module at path, executed one top-level statement at a time,
    leaving out tests and every statement that needs TensorFlow."""
    tree = ast.parse(Path(path).read_text(), str(path))
    module = types.ModuleType(name)
    module.__file__ = str(path)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test"):
            continue
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
        try:
            exec(code, module.__dict__)
        except (ImportError, NameError, AttributeError):
            continue  # needs TensorFlow (or a name that does)
    return module


def pytest_configure(config):
    path = Path(str(config.rootpath)) / "tests" / "test_xla.py"
    if path.exists() and "test_xla" not in sys.modules:
        sys.modules["test_xla"] = tensorflow_free_module(path, "test_xla")
        _loaded.append("test_xla")


def pytest_report_header(config):
    shim = f"; {', '.join(_loaded)}: TensorFlow-free definitions only" if _loaded else ""
    return f"gpu-check: TensorFlow hidden from the tests{shim}"
