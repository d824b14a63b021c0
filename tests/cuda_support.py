"""What the CUDA test modules share (test_cuda.py: the numbers;
test_cuda_streams.py: labels, streams and other frameworks' arrays): the
device they run on, skipped with the reason where fastiou's CUDA kernels
cannot run, and PyTorch tensors on it.

The tests drive the CUDA kernels through the framework-neutral module with
PyTorch tensors (no TensorFlow needed). Skipped where fastiou's CUDA kernels
cannot run (fastiou.kernels.cuda_unavailable_reason() says why: no CUDA
kernels in the build, a driver too old for them, no GPU) or PyTorch sees no
GPU. With FASTIOU_TEST_DEVICE=cpu the same tests run on CPU tensors (the C++
kernels through DLPack), which checks the tests themselves on a machine with
no GPU.
"""

import os

import numpy as np
import pytest

import fastiou.kernels as fk

# JAX, where a test uses it on the GPU, takes memory as it needs it instead of
# most of the GPU up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

torch = pytest.importorskip("torch")

DEVICE = os.environ.get("FASTIOU_TEST_DEVICE", "cuda")
if DEVICE == "cuda":
    _reason = fk.cuda_unavailable_reason()
    if _reason is not None:
        pytest.skip(_reason, allow_module_level=True)
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU", allow_module_level=True)

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}
# Relative tolerance of sums and gradients against the float64 formula.
RTOL = {"float16": 3e-3, "bfloat16": 2e-2, "float32": 3e-5, "float64": 1e-11}


def on_device(x, dtype=None):
    t = torch.from_numpy(np.ascontiguousarray(x)).to(DEVICE)
    return t if dtype is None else t.to(dtype)


def to_numpy(x):
    return x.detach().cpu().numpy()


def acc_dtype(pred_dtype):
    return torch.float64 if pred_dtype == torch.float64 else torch.float32
