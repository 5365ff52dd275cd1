"""Data parallelism over a device mesh: the mesh, its `data` axis and the shardings used.

`charjax.train` builds a 1-D mesh (`make_mesh`) over `config.num_devices` devices (0: all
of them) and trains inside `jax.set_mesh(mesh)`: parameters, optimizer state and the
dataset are replicated on every device, and each batch is split along the `data` axis, so
each device computes 1/N of every batch and XLA sums the gradients. XLA partitions every
operation of the step except custom calls: charjax's native CPU convolution wraps its
kernels in `jax.shard_map` over the same axis (`per_device`), so that each device runs them
on its own images.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from charjax.runtime import distributed

DATA_AXIS = 'data'


class MeshError(ValueError):
  """A mesh that cannot be built on this machine's devices."""


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh with axis `data` over the first `num_devices` devices (0: all)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise MeshError(f'num_devices={num_devices}, but JAX sees {len(devices)} '
                    f'{devices[0].platform} device(s).')
  return jax.make_mesh((n,), (DATA_AXIS,), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh, ndim: int = 1, axis: int = 0) -> NamedSharding:
  """Split along `axis` (the batch) over the `data` axis, whole along the others."""
  spec = [None] * ndim
  spec[axis] = DATA_AXIS
  return NamedSharding(mesh, P(*spec))


def data_parallel_size() -> int:
  """Devices along `data` in the current mesh context (1 outside one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return 1
  return mesh.shape[DATA_AXIS]


def per_device(fn, batched: tuple[bool, ...], summed: bool):
  """`fn` run by each device of the current mesh on its own part of the batch.

  `batched[i]` says whether argument i is split along its first axis (images) or whole
  (a kernel); `fn`'s outputs are per-image (split too), or, with `summed`, sums over the
  images, added over devices (`psum`). Outside a mesh of more than one device, and for a
  batch that does not split evenly (a model's initialisation on one image), `fn` itself
  (XLA then gives it whole arguments).
  """
  n = data_parallel_size()
  if n == 1:
    return fn
  mesh = jax.sharding.get_abstract_mesh()
  in_specs = tuple(P(DATA_AXIS) if b else P() for b in batched)

  def local(*args):
    outs = fn(*args)
    return [jax.lax.psum(o, DATA_AXIS) for o in outs] if summed else outs

  def run(*args):
    if any(b and a.shape[0] % n for a, b in zip(args, batched)):
      return fn(*args)
    out_specs = [P() if summed else P(DATA_AXIS)] * len(jax.eval_shape(fn, *[
        jax.ShapeDtypeStruct((a.shape[0] // n,) + a.shape[1:] if b else a.shape, a.dtype)
        for a, b in zip(args, batched)]))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(*args)
  return run


def put_replicated(mesh, tree):
  """A full copy of `tree` on every device of `mesh`.

  Made from host copies, so that arrays created on one process's default device can join
  a mesh that spans several processes.
  """
  return jax.device_put(distributed.to_host(tree), replicated(mesh))
