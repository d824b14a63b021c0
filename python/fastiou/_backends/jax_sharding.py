"""fastiou's JAX custom calls on sharded arrays: how they split over devices.

Under `jax.jit` with inputs sharded over a mesh (a batch split over data-
parallel devices, an image split over spatial ones), XLA's partitioner would
otherwise gather every operand of an opaque custom call onto every device.
`jax.experimental.custom_partitioning` tells it instead what the kernels are:

- The stats kernel is a sum over the batch and spatial axes. Each device runs
  it on its own block of the inputs; the partial sums (3 x C, or 3 x B x C per
  image) are added with one all-reduce (psum) over the mesh axes that split
  the summed axes. Per image the batch axis is not summed: the sums stay split
  like the batch, and only a spatial split needs the all-reduce.
- The gradient kernel is elementwise given the sums' cotangents: each device
  runs it on its block, and the gradient has y_pred's sharding.

So no mask-sized array crosses devices. fastiou.metrics' confusion counts
split like the stats: a sum over the batch and pixels, one all-reduce of
the [3, K] counts (partitioned_counts). The channel axis is taken whole (a
softmax and sparse labels need every channel of a pixel): a split channel
axis is gathered first. So is an axis that does not split evenly over its
devices, since the padding of an uneven block would enter the sums. Nothing
here is CPU- or GPU-specific: the per-device function is the same jax.ffi
call of the platform's handler.

Shardy (JAX's default partitioner) reads the `sharding_rule` (einsum-like
factors; the summed axes are reduction factors); the older GSPMD partitioner
reads `infer_sharding_from_operands`. Both end in `partition`, which fixes the
shardings and the per-device function.

Custom partitioning has no batching rule: `jax.custom_batching.sequential_vmap`
keeps `jax.vmap` working, running mapped items one after another as the
ffi_call's vmap_method="sequential" does.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec


class Layout(NamedTuple):
    """What partitioning needs of one call besides the shardings (hashable:
    a static argument of the partitioned functions)."""

    opts: tuple  # the kernels' options (fastiou._backends.jax)
    rank: int  # y_pred's rank: batch, spatial axes, channels
    channels: int  # C, y_pred's last axis
    true_channels: int  # y_true's last axis: C or 1; 0 for labels without a channel axis
    weights_channels: int  # the weights' last axis: C or 1; 0 without weights

    @property
    def per_image(self):
        return bool(self.opts[1])


def _layout(y_true, y_pred, weights, opts):
    has_weights = bool(opts[5])
    true_channels = y_true.shape[-1] if y_true.ndim == y_pred.ndim else 0
    return Layout(tuple(opts), y_pred.ndim, y_pred.shape[-1], true_channels,
                  weights.shape[-1] if has_weights else 0)


# --- The sharding rule (Shardy): einsum-like factors of each operand's axes.

def _rule(lay, grad):
    spatial = [f"s{i}" for i in range(lay.rank - 2)]

    def mask(last):
        return " ".join(["b", *spatial, last])

    pred = mask("c")
    if lay.true_channels == 0:
        true = " ".join(["b", *spatial])  # class labels
    else:
        true = pred if lay.true_channels == lay.channels else mask("t")
    if lay.weights_channels == 0:
        weights = "z"  # the empty placeholder of no weights
    else:
        weights = pred if lay.weights_channels == lay.channels else mask("w")
    sums = "b c" if lay.per_image else "c"
    if grad:
        rule = f"{true}, {pred}, {weights}, {sums}, {sums}, {sums} -> {pred}"
        reduced = ()
    else:
        rule = f"{true}, {pred}, {weights} -> {sums}, {sums}, {sums}"
        reduced = tuple(spatial) + (() if lay.per_image else ("b",))
    # Shardy numbers the factors in order of appearance and wants them so.
    order = list(dict.fromkeys(rule.replace(",", " ").replace("->", " ").split()))
    whole = [f for f in order if f in ("c", "t", "w", "z")]
    return rule, dict(reduction_factors=tuple(sorted(reduced, key=order.index)),
                      need_replication_factors=tuple(whole))


# --- Partitioning: the shardings the kernels run on, and the psum.

def _entries(sharding, rank):
    """The mesh axes (a tuple, maybe empty) that split each axis of an operand."""
    if not isinstance(sharding, NamedSharding):
        if sharding is None or sharding.is_fully_replicated:
            return [()] * rank
        raise ValueError(f"fastiou's JAX losses partition inputs sharded over a named mesh "
                         f"(jax.sharding.NamedSharding); got {sharding}")
    spec = tuple(sharding.spec) + (None,) * (rank - len(sharding.spec))
    return [() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in spec]


def _split(mesh, lay, pred):
    """The mesh axes splitting each non-channel axis of y_pred, as the kernels
    take it: the channel axis whole, uneven splits undone."""
    entries = _entries(pred.sharding, lay.rank)[:-1]
    return [axes if axes and pred.shape[d] % math.prod(mesh.shape[a] for a in axes) == 0 else ()
            for d, axes in enumerate(entries)]


def _named(mesh, *entries):
    return NamedSharding(mesh, PartitionSpec(*(None if not e else e[0] if len(e) == 1 else e
                                               for e in entries)))


def _operand_shardings(mesh, lay, split, extra):
    """The shardings of y_true, y_pred and the weights (then `extra` more)."""
    mask = _named(mesh, *split, ())
    true = mask if lay.true_channels else _named(mesh, *split)
    weights = mask if lay.weights_channels else _named(mesh, ())
    return (true, mask, weights) + extra


def _sums_sharding(mesh, lay, split):
    return _named(mesh, split[0], ()) if lay.per_image else _named(mesh, ())


def _on_one_device(*arrays):
    """Concrete arrays (outside jit) that live on one device: the plain call,
    without the partitioned one's tracing at every call."""
    return all(isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
               and len(a.sharding.device_set) == 1 for a in arrays)


def partitioned(stats_fn, grad_fn):
    """(stats, grad): stats_fn and grad_fn (the plain jax.ffi calls) as
    functions that split over a mesh, with stats_fn's and grad_fn's arguments."""

    def stats_impl(y_true, y_pred, weights, lay):
        return stats_fn(y_true, y_pred, weights, lay.opts)

    def grad_impl(y_true, y_pred, weights, g_i, g_p, g_t, lay, wrt_true):
        return grad_fn(y_true, y_pred, weights, g_i, g_p, g_t, lay.opts, wrt_true)

    stats_cp = custom_partitioning(stats_impl, static_argnums=(3,))
    grad_cp = custom_partitioning(grad_impl, static_argnums=(6, 7))

    def stats_partition(lay, mesh, arg_shapes, result_shape):
        split = _split(mesh, lay, arg_shapes[1])
        summed = [a for axes in split[1:] for a in axes]
        if not lay.per_image:
            summed = list(split[0]) + summed

        def per_device(y_true, y_pred, weights):
            sums = stats_fn(y_true, y_pred, weights, lay.opts)
            if not summed:
                return sums
            total = jax.lax.psum(jnp.stack(sums), tuple(summed))  # one all-reduce of 3 x (B x) C
            return total[0], total[1], total[2]

        out = _sums_sharding(mesh, lay, split)
        return mesh, per_device, (out, out, out), _operand_shardings(mesh, lay, split, ())

    def stats_infer(lay, mesh, arg_shapes, result_shape):
        out = _sums_sharding(mesh, lay, _split(mesh, lay, arg_shapes[1]))
        return (out, out, out)

    def grad_partition(lay, wrt_true, mesh, arg_shapes, result_shape):
        split = _split(mesh, lay, arg_shapes[1])
        sums = _sums_sharding(mesh, lay, split)

        def per_device(*args):
            return grad_fn(*args, lay.opts, wrt_true)

        out = _named(mesh, *split, ())
        return mesh, per_device, out, _operand_shardings(mesh, lay, split, (sums, sums, sums))

    def grad_infer(lay, wrt_true, mesh, arg_shapes, result_shape):
        return _named(mesh, *_split(mesh, lay, arg_shapes[1]), ())

    stats_cp.def_partition(stats_partition, infer_sharding_from_operands=stats_infer,
                           sharding_rule=lambda lay, mesh, *types: _rule(lay, grad=False))
    grad_cp.def_partition(grad_partition, infer_sharding_from_operands=grad_infer,
                          sharding_rule=lambda lay, wrt_true, mesh, *types: _rule(lay, grad=True))

    def stats(y_true, y_pred, weights, opts):
        if _on_one_device(y_true, y_pred, weights):
            return stats_fn(y_true, y_pred, weights, opts)
        lay = _layout(y_true, y_pred, weights, opts)
        call = jax.custom_batching.sequential_vmap(lambda t, p, w: stats_cp(t, p, w, lay))
        return call(y_true, y_pred, weights)

    def grad(y_true, y_pred, weights, g_i, g_p, g_t, opts, wrt_true):
        if _on_one_device(y_true, y_pred, weights, g_i, g_p, g_t):
            return grad_fn(y_true, y_pred, weights, g_i, g_p, g_t, opts, wrt_true)
        lay = _layout(y_true, y_pred, weights, opts)
        call = jax.custom_batching.sequential_vmap(
            lambda t, p, w, gi, gp, gt: grad_cp(t, p, w, gi, gp, gt, lay, bool(wrt_true)))
        return call(y_true, y_pred, weights, g_i, g_p, g_t)

    return stats, grad


# --- The fused confusion counts of fastiou.metrics: a sum over every pixel.

class CountsLayout(NamedTuple):
    """What partitioning the counts needs besides the shardings (hashable):
    the kernel's attributes, and whether the weights' rows and columns are
    the batch's and the pixels' (or one, shared by all)."""

    attributes: tuple  # (name, value) pairs, in fastiou.metrics._kernel_arguments' order
    weights_by_batch: bool
    weights_by_pixel: bool

    @property
    def rank(self):
        return 3  # y_true and y_pred viewed as [batch, pixels, channels]


def _counts_rule(lay):
    # y_true [b, p, t], y_pred [b, p, c], weights [rows, cols] -> counts [3, k]
    rows = "b" if lay.weights_by_batch else "r"
    cols = "p" if lay.weights_by_pixel else "q"
    rule = f"b p t, b p c, {rows} {cols} -> e k"
    order = list(dict.fromkeys(rule.replace(",", " ").replace("->", " ").split()))
    whole = tuple(f for f in order if f not in ("b", "p"))
    return rule, dict(reduction_factors=("b", "p"), need_replication_factors=whole)


def partitioned_counts(counts_fn):
    """counts_fn(y_true, y_pred, weights, **attributes) (the plain jax.ffi
    call) as a function that splits over a mesh: each device counts its block
    of the batch and pixels (the channel axis whole, uneven splits undone)
    and one all-reduce adds the [3, K] counts."""

    def impl(y_true, y_pred, weights, lay):
        return counts_fn(y_true, y_pred, weights, **dict(lay.attributes))

    cp = custom_partitioning(impl, static_argnums=(3,))

    def partition(lay, mesh, arg_shapes, result_shape):
        split = _split(mesh, lay, arg_shapes[1])
        summed = tuple(a for axes in split for a in axes)
        mask = _named(mesh, split[0], split[1], ())
        weights = _named(mesh, split[0] if lay.weights_by_batch else (),
                         split[1] if lay.weights_by_pixel else ())

        def per_device(y_true, y_pred, w):
            counts = counts_fn(y_true, y_pred, w, **dict(lay.attributes))
            return jax.lax.psum(counts, summed) if summed else counts  # one all-reduce of 3 x K

        return mesh, per_device, _named(mesh, (), ()), (mask, mask, weights)

    def infer(lay, mesh, arg_shapes, result_shape):
        return _named(mesh, (), ())

    cp.def_partition(partition, infer_sharding_from_operands=infer,
                     sharding_rule=lambda lay, mesh, *types: _counts_rule(lay))

    def counts(y_true, y_pred, weights, **attributes):
        if _on_one_device(y_true, y_pred, weights):
            return counts_fn(y_true, y_pred, weights, **attributes)
        b, p = y_pred.shape[0], y_pred.shape[1]
        rows, cols = weights.shape
        lay = CountsLayout(tuple(attributes.items()), rows == b and b > 1, cols == p and p > 1)
        call = jax.custom_batching.sequential_vmap(lambda t, q, w: cp(t, q, w, lay))
        return call(y_true, y_pred, weights)

    return counts
