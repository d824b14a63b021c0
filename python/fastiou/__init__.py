"""fastiou: fused soft Jaccard/IoU, Dice and Tversky losses for Keras and TensorFlow.

    import fastiou
    model.compile(optimizer="adam", loss=fastiou.losses.JaccardLoss(from_logits=True))
"""

from fastiou import losses, reference
from fastiou._ops import in_xla_context, overlap_stats
from fastiou.losses import dice_loss, jaccard_loss, tversky_loss

__version__ = "0.1.0"

__all__ = [
    "losses",
    "reference",
    "overlap_stats",
    "in_xla_context",
    "jaccard_loss",
    "dice_loss",
    "tversky_loss",
]
