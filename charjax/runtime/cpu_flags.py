"""XLA:CPU options charjax sets before JAX starts its CPU backend.

With jaxlib 0.10, XLA:CPU hands convolutions to YNNPACK by default, whose convolution
(its weight gradient especially) is much slower here than XLA's own Eigen convolution
(measured in docs/design.md, XLA:CPU flag). `apply()` (called by
`charjax.runtime.cpu_settings` for the commands, never on import) removes that one fusion
type from the default list, unless `XLA_FLAGS` already says something about YNNPACK
fusions or `CHARJAX_KEEP_XLA_FLAGS=1` is set. It must happen before JAX starts.
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
