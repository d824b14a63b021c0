"""The cases the tests share: the modes (how targets and predictions meet, in
the losses' vocabulary), the random cases built for them, the losses and
their references by name, and the check for mask-sized work in compiled
code. The float64 oracle for the sums and losses is overlap_oracle.py.

Importable without TensorFlow (the device check hides it): TensorFlow is
imported only by the functions that build TensorFlow tensors or look up the
TensorFlow losses.
"""

import re
from typing import NamedTuple, Optional

import numpy as np


class Mode(NamedTuple):
    """Targets of one kind against predictions of `channels` channels.

    kind: "mask" (a 0/1 target per element), "one-hot" (a one-hot target per
    pixel) or "labels" (sparse class indices: no channel axis).
    softmax: a softmax over the channels, the losses' mode="multiclass";
    otherwise a sigmoid per element (binary, or mode="multilabel").
    """

    name: str
    channels: int
    kind: str
    from_logits: bool
    softmax: bool
    ignore_index: Optional[int] = None

    @property
    def sparse(self):
        return self.kind == "labels"

    def kernel_options(self):
        """Arguments of the kernels (fastiou.kernels, overlap_stats) and of the oracle."""
        opts = dict(from_logits=self.from_logits)
        if self.softmax:
            opts["softmax"] = True
        if self.sparse:
            opts["sparse"] = True
        if self.ignore_index is not None:
            opts["ignore_index"] = self.ignore_index
        return opts

    def loss_options(self):
        """Arguments of the losses, or None where no loss takes this mode."""
        if self.softmax and self.channels < 2:
            return None  # mode="multiclass" needs two channels
        if self.sparse and not self.softmax:
            return None  # class indices are multi-class: the losses take a softmax
        opts = dict(from_logits=self.from_logits)
        if self.kind == "mask" and self.channels > 1:
            opts["mode"] = "multilabel"
        elif self.kind == "one-hot":
            opts["mode"] = "multiclass"
        if self.ignore_index is not None:
            opts["ignore_index"] = self.ignore_index
        return opts


MODES = [
    Mode("binary-logits", 1, "mask", True, False),
    Mode("binary-probabilities", 1, "mask", False, False),
    Mode("multilabel-logits", 3, "mask", True, False),
    Mode("multiclass-one-hot", 4, "one-hot", True, True),
    # A softmax over one channel is the constant 1: dense targets on the
    # per-pixel path with a single channel. The kernels' case only.
    Mode("multiclass-one-channel", 1, "mask", True, True),
    Mode("multilabel-probabilities", 3, "mask", False, False),
    Mode("multiclass-sparse", 5, "labels", True, True, ignore_index=255),
    Mode("multiclass-sparse-probabilities", 3, "labels", False, True),
]
MODE = {m.name: m for m in MODES}
# The modes a loss takes (fastiou's TensorFlow losses, fastiou.jax).
LOSS_MODES = [m for m in MODES if m.loss_options() is not None]


def mode_ids(modes):
    return [m.name for m in modes]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make_case(rng, shape, kind, from_logits, true_dtype="uint8", pred_dtype="float32", ignore=None, *,
              scale=2.0, fg=0.3, ignore_share=0.1):
    """(targets, predictions) as NumPy arrays for predictions of `shape`.

    Predictions: normal logits of standard deviation `scale`, or probabilities
    (a sigmoid for masks, a softmax over the channels otherwise), as
    pred_dtype. Targets of `kind` (see Mode): masks with about `fg`
    foreground, as true_dtype; one-hot targets as true_dtype; class indices of
    shape[:-1], about `ignore_share` of them `ignore` where it is given, as
    true_dtype where that is an integer type and as uint8 otherwise.
    """
    z = rng.normal(scale=scale, size=shape)
    if not from_logits:
        z = _sigmoid(z) if kind == "mask" else _softmax(z)
    if kind == "mask":
        t = (rng.random(shape) < fg).astype(true_dtype)
    elif kind == "one-hot":
        t = np.eye(shape[-1], dtype=true_dtype)[rng.integers(0, shape[-1], size=shape[:-1])]
    elif kind == "labels":
        t = rng.integers(0, shape[-1], size=shape[:-1])
        if ignore is not None:
            t = np.where(rng.random(shape[:-1]) < ignore_share, ignore, t)
        t = t.astype(true_dtype if np.dtype(true_dtype).kind in "iu" else "uint8")
    else:
        raise ValueError(f"unknown target kind {kind!r}")
    return t, z.astype(pred_dtype)


def mode_case(rng, mode, batch_shape, true_dtype="uint8", pred_dtype="float32", **kwargs):
    """make_case for `mode`: predictions of batch_shape + (mode.channels,)."""
    return make_case(rng, tuple(batch_shape) + (mode.channels,), mode.kind, mode.from_logits, true_dtype,
                     pred_dtype, mode.ignore_index, **kwargs)


# --- TensorFlow tensors.

def tf_case(rng, shape, kind, from_logits, true_dtype="uint8", pred_dtype="float32", ignore=None, **kwargs):
    """make_case as TensorFlow tensors; predictions rounded once from float64
    to pred_dtype (bfloat16 included)."""
    import tensorflow as tf

    t, z = make_case(rng, shape, kind, from_logits, true_dtype, "float64", ignore, **kwargs)
    return tf.constant(t), tf.cast(tf.constant(z), pred_dtype)


def make_inputs(rng, shape, pred_dtype="float32", true_dtype="float32", from_logits=True, fg=0.3):
    """Random logits (or probabilities) and a mask with about `fg` foreground, as TensorFlow tensors."""
    return tf_case(rng, shape, "mask", from_logits, true_dtype, pred_dtype, fg=fg)


# --- The losses by name: fastiou's and the pure-Keras reference's.

# name: (function of fastiou and fastiou.reference, its extra arguments)
LOSSES = {
    "jaccard": ("jaccard_loss", {}),
    "dice": ("dice_loss", {}),
    "tversky": ("tversky_loss", {"alpha": 0.3, "beta": 0.7}),
    "focal_tversky": ("tversky_loss", {"alpha": 0.7, "beta": 0.3, "gamma": 0.75}),
}


def loss_functions(name):
    """(fused, reference, extra arguments) of the loss `name` of LOSSES."""
    import fastiou

    function, extra = LOSSES[name]
    return getattr(fastiou, function), getattr(fastiou.reference, function), dict(extra)


# --- Compiled code: fastiou's custom calls and nothing else mask-sized.

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(\(.*?\)|\w+\[[\d,]*\](?:\{[\d,]*\})?)\s+([\w\-]+)\(")
_ALLOWED = {"parameter", "bitcast", "reshape", "custom-call", "tuple", "get-tuple-element"}


def _elements(shape_text):
    total = 0
    for dims in re.findall(r"\w+\[([\d,]*)\]", shape_text):
        total = max(total, int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1)
    return total


def mask_sized_work(hlo, mask_elements):
    """(opcode, line) of every instruction of the HLO text whose result is at
    least mask-sized and is not a parameter, bitcast, reshape or custom call."""
    found = []
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if m and _elements(m.group(1)) >= mask_elements and m.group(2) not in _ALLOWED:
            found.append((m.group(2), line.strip()[:160]))
    return found
