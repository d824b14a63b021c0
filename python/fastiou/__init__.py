"""fastiou: fused soft Jaccard/IoU, Dice and Tversky losses for Keras and TensorFlow.

    import fastiou
    model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(from_logits=True),
                  metrics=[fastiou.metrics.BinaryIoU(target_class_ids=[1], from_logits=True)])

`fastiou.kernels` runs the same kernels on NumPy, CuPy, PyTorch or JAX arrays
without TensorFlow, and `fastiou.jax` gives the losses to JAX and Flax. Where
TensorFlow is not installed, fastiou was built without its TensorFlow ops, or
Keras runs on another backend, the TensorFlow losses are not loaded.
"""

import importlib.util as _util
import os as _os

from fastiou import kernels
from fastiou._defaults import keras_backend as _keras_backend
from fastiou.kernels import built_with_cuda

__version__ = "0.1.0"

__all__ = ["kernels", "built_with_cuda"]

# The TensorFlow side loads only on Keras' TensorFlow backend, where TensorFlow
# and fastiou's ops for it are installed: on the JAX backend fastiou imports
# no TensorFlow and its losses run through fastiou.jax.
_HAVE_TF_OPS = (_keras_backend() == "tensorflow" and _util.find_spec("tensorflow") is not None
                and _os.path.exists(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)),
                                                  "_fastiou_ops.so")))

_ON_JAX = _keras_backend() == "jax" and _util.find_spec("jax") is not None and bool(kernels.ffi_handlers())

if _HAVE_TF_OPS:
    from fastiou import losses, metrics, reference
    from fastiou._ops import in_xla_context, overlap_stats
    from fastiou.losses import dice_loss, jaccard_loss, tversky_loss

    __all__ += [
        "losses",
        "metrics",
        "reference",
        "overlap_stats",
        "in_xla_context",
        "jaccard_loss",
        "dice_loss",
        "tversky_loss",
    ]
elif _ON_JAX:
    # Keras on JAX: the same loss classes and functions on the same kernels.
    from fastiou import losses, metrics, reference
    from fastiou.jax import overlap_stats
    from fastiou.losses import dice_loss, jaccard_loss, tversky_loss

    __all__ += ["losses", "metrics", "reference", "overlap_stats", "jaccard_loss", "dice_loss", "tversky_loss"]
else:
    def __getattr__(name):
        if name in ("losses", "metrics", "reference", "overlap_stats", "in_xla_context", "jaccard_loss", "dice_loss",
                    "tversky_loss"):
            backend = _keras_backend()
            extra = "jax" if backend == "jax" else "tensorflow"
            raise AttributeError(
                f"fastiou.{name} runs on Keras' TensorFlow or JAX backend (here: {backend!r}) and needs "
                f"that framework: pip install 'fastiou[{extra}]' (TensorFlow 2.21, or JAX), and a fastiou "
                "built with its TensorFlow ops or XLA FFI handlers. Other arrays: fastiou.kernels.")
        raise AttributeError(f"module 'fastiou' has no attribute {name!r}")
