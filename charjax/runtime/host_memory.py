"""glibc malloc settings that keep XLA:CPU's large buffers in the process (Linux only).

By default glibc serves every allocation over 32 MB with a fresh `mmap` and returns it to
the kernel when freed, so the large temporary buffers of every call of a compiled function
are page-faulted again, a large share of a short call's time (measured in
docs/design.md, Host memory). `apply()` (called by `charjax.runtime.cpu_settings` for
the commands, never on import) asks glibc (`mallopt`) to serve large blocks from its heap
and to keep freed memory: no mmap, no trimming, one arena (so that threads share the
freed blocks). The price is that the process keeps its peak memory until it exits. Set
`CHARJAX_KEEP_MALLOC=1` to opt out; nothing changes outside glibc-based Linux.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

OPT_OUT_ENV = 'CHARJAX_KEEP_MALLOC'
# mallopt parameters from glibc's malloc.h: (M_MMAP_MAX, M_TRIM_THRESHOLD, M_ARENA_MAX).
SETTINGS = ((-4, 0), (-1, 2**31 - 1), (-8, 1))


def apply() -> bool:
  """Applies `SETTINGS` with glibc's `mallopt`; returns whether all were accepted."""
  if os.environ.get(OPT_OUT_ENV) or platform.system() != 'Linux':
    return False
  if platform.libc_ver()[0] != 'glibc':
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in SETTINGS)
