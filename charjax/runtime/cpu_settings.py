"""The process-wide settings charjax's command-line entry points apply on the CPU backend.

Two settings pay on XLA:CPU (see `charjax.runtime.cpu_flags` and `charjax.runtime.host_memory`): an
`XLA_FLAGS` entry that keeps convolutions away from YNNPACK, and glibc `mallopt` settings
that keep large buffers in the heap. Both change the whole process, so `import charjax`
applies neither: `charjax.cli.run` (every `python -m charjax.*` command) and the
benchmarks call `apply()`, and a researcher who wants them in their own program calls it
before JAX starts its backends. Nothing is applied when the process will compute on an
accelerator (`JAX_PLATFORMS` names one first, or a GPU/TPU plugin for JAX is installed).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

from charjax.runtime import cpu_flags
from charjax.runtime import host_memory

# Distributions that give JAX an accelerator backend (then the default backend is not CPU).
_ACCELERATOR_PLUGINS = ('jax-cuda12-plugin', 'jax-cuda13-plugin', 'jax-cuda12-pjrt',
                        'jax-cuda13-pjrt', 'jax-rocm60-plugin', 'jax-rocm7-plugin', 'libtpu',
                        'libtpu-nightly')


def will_compute_on_cpu() -> bool:
  """Whether JAX's default backend will be the CPU, judged without starting JAX."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  for name in _ACCELERATOR_PLUGINS:
    try:
      importlib.metadata.version(name)
      return False
    except importlib.metadata.PackageNotFoundError:
      continue
  return True


def _backends_started() -> bool:
  bridge = sys.modules.get('jax._src.xla_bridge')
  return bool(getattr(bridge, '_backends', None))


def apply() -> dict[str, bool]:
  """Applies the CPU settings if this process will compute on CPU; says what was applied.

  Call it before the first JAX computation: `XLA_FLAGS` is read when JAX starts its
  backends (applied later, the flag is skipped and only the malloc settings apply).
  `CHARJAX_KEEP_XLA_FLAGS=1` and `CHARJAX_KEEP_MALLOC=1` opt out of each.
  """
  if not will_compute_on_cpu():
    return {'xla_flags': False, 'malloc': False}
  return {'xla_flags': not _backends_started() and cpu_flags.apply(),
          'malloc': host_memory.apply()}
