"""fastiou: fused soft Jaccard/IoU, Dice and Tversky losses for Keras and TensorFlow.

    import fastiou
    model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(from_logits=True))

`fastiou.kernels` runs the same kernels on NumPy, CuPy, PyTorch or JAX arrays
without TensorFlow; where TensorFlow is not installed, only it is available.
"""

import importlib.util as _util

from fastiou import kernels
from fastiou.kernels import built_with_cuda

__version__ = "0.1.0"

__all__ = ["kernels", "built_with_cuda"]

if _util.find_spec("tensorflow") is not None:
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
