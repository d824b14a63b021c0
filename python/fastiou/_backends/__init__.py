"""The backends of fastiou's one loss front end (fastiou._front.overlap_loss).

`tensorflow`: fastiou's TensorFlow ops; `jax`: the same kernels through XLA
FFI. Each is imported only where its framework is used: importing this
package imports neither.
"""
