"""fastiou: fused soft Jaccard/IoU, Dice and Tversky losses for Keras and TensorFlow.

    import fastiou
    model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(from_logits=True))

`fastiou.kernels` runs the same kernels on NumPy, CuPy, PyTorch or JAX arrays
without TensorFlow. Where TensorFlow is not installed, or fastiou was built
without its TensorFlow ops, only `fastiou.kernels` is available.
"""

import importlib.util as _util
import os as _os

from fastiou import kernels
from fastiou.kernels import built_with_cuda

__version__ = "0.1.0"

__all__ = ["kernels", "built_with_cuda"]

_HAVE_TF_OPS = _util.find_spec("tensorflow") is not None and _os.path.exists(
    _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "_fastiou_ops.so"))

if _HAVE_TF_OPS:
    from fastiou import losses, reference
    from fastiou._ops import in_xla_context, overlap_stats
    from fastiou.losses import dice_loss, jaccard_loss, tversky_loss

    __all__ += [
        "losses",
        "reference",
        "overlap_stats",
        "in_xla_context",
        "jaccard_loss",
        "dice_loss",
        "tversky_loss",
    ]
else:
    def __getattr__(name):
        if name in ("losses", "reference", "overlap_stats", "in_xla_context", "jaccard_loss", "dice_loss",
                    "tversky_loss"):
            raise AttributeError(
                f"fastiou.{name} needs TensorFlow 2.21 and fastiou's TensorFlow ops; this installation "
                "has only the framework-neutral kernels (fastiou.kernels). Install TensorFlow 2.21 and "
                "rebuild fastiou against it.")
        raise AttributeError(f"module 'fastiou' has no attribute {name!r}")
