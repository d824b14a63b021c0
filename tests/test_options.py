"""The overlap ops' options as each door registers them: the TensorFlow ops'
attributes (the XLA lowering and the XLA FFI handlers take the same ones),
the framework-neutral module's keyword arguments and the attributes the
Python front ends build. Each is read from what was registered (the op
definitions, the module's signatures) and checked against the others and
against the options fastiou.kernels documents."""

import re

import pytest

tf = pytest.importorskip("tensorflow")

from tensorflow.python.framework import op_def_registry  # noqa: E402

import fastiou._ops  # noqa: E402, F401 - registers the ops
from fastiou import _fastiou_kernels as ext  # noqa: E402
from fastiou import _shapes  # noqa: E402

# fastiou.kernels.overlap_stats's options and their defaults, as its
# docstring gives them.
DOCUMENTED = [("from_logits", False), ("per_image", True), ("softmax", False), ("sparse", False),
              ("ignore_index", None), ("check_range", True)]


def op_options(op_name):
    """(name, type, default) of a registered op's attributes but its dtypes."""
    out = []
    for attr in op_def_registry.get(op_name).attr:
        if attr.type == "type":
            continue
        default = attr.default_value.b if attr.type == "bool" else attr.default_value.i
        out.append((attr.name, attr.type, default))
    return out


def module_keywords(function):
    """(name, default as written) of the keyword-only arguments in a module
    function's signature, as pybind11 renders it in the docstring."""
    signature = function.__doc__.splitlines()[0]
    keywords = signature[signature.index("*,") + 2:signature.rindex(")")]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"(\w+): [^=]+? = ([^,]+)", keywords)]


def test_the_gradient_op_takes_the_stats_options_and_wrt_true():
    stats = op_options("FastiouOverlapStats")
    assert op_options("FastiouOverlapGrad") == stats + [("wrt_true", "bool", False)]
    assert {t for _, t, _ in stats} <= {"bool", "int"}


def test_the_module_takes_the_op_options_but_the_flags():
    # A flag has_x of the ops says whether weights or ignore_index is given;
    # the module reads that off its arguments (None: not given).
    stats = op_options("FastiouOverlapStats")
    flags = [name for name, _, _ in stats if name.startswith("has_")]
    assert flags == ["has_weights", "has_ignore"]
    want = [(name, "None" if name == "ignore_index" else str(default))
            for name, _, default in stats if name not in flags]
    assert module_keywords(ext.overlap_stats) == want + [("stream", "None"), ("check_labels", "True")]
    assert module_keywords(ext.overlap_grad) == want + [("wrt_true", "False"), ("stream", "None")]
    assert [(name, str(default)) for name, default in DOCUMENTED] == want


def test_the_front_ends_pass_every_op_option_with_its_type():
    stats = op_options("FastiouOverlapStats")
    attrs = _shapes.op_options(from_logits=True, per_image=False, softmax=True, sparse=True, ignore_index=7,
                               has_weights=True, check_range=False)
    assert list(attrs) == [name for name, _, _ in stats]
    assert all(type(attrs[name]) is (bool if kind == "bool" else int) for name, kind, _ in stats)
    assert attrs["has_ignore"] and attrs["ignore_index"] == 7 and attrs["check_range"] is False
    unset = _shapes.op_options(from_logits=False, per_image=True, softmax=False, sparse=False, ignore_index=None,
                               has_weights=False, check_range=True)
    assert unset == {name: default for name, _, default in stats}
