"""XLA:CPU options charjax sets before JAX starts its CPU backend.

With jaxlib 0.10, XLA:CPU hands convolutions to YNNPACK by default, whose convolution is
slow here (its weight gradient especially: ~12 s per exp-2 gradient at batch 800, against
~1 s for XLA's own Eigen convolution once YNNPACK's convolution fusion is off; charjax's
patch convolution also gains ~6%; see `benchmarks/`). Importing charjax therefore removes that one fusion type from the default
list, unless `XLA_FLAGS` already says something about YNNPACK fusions or
`CHARJAX_KEEP_XLA_FLAGS=1` is set. It must happen before the first JAX computation.
"""

from __future__ import annotations

import os

YNN_CONVOLUTION_OFF = (
    '--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION')
OPT_OUT_ENV = 'CHARJAX_KEEP_XLA_FLAGS'


def apply() -> bool:
  """Adds `YNN_CONVOLUTION_OFF` to `XLA_FLAGS`; returns whether it changed anything."""
  current = os.environ.get('XLA_FLAGS', '')
  if os.environ.get(OPT_OUT_ENV) or 'ynn_fusion_type' in current:
    return False
  os.environ['XLA_FLAGS'] = f'{current} {YNN_CONVOLUTION_OFF}'.strip()
  return True
