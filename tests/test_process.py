"""Importing charjax leaves the process as it was; its commands apply the CPU settings."""

import json
import subprocess
import sys

import pytest

from charjax.runtime import cpu_settings
from tests.test_train import REPO

# Imports every charjax module a researcher might use, then reports XLA_FLAGS, whether JAX
# started a backend, and whether glibc keeps 256 MB of freed 64 MB blocks (it returns them by default; charjax's malloc
# settings keep them). With 'apply', `cpu_settings.apply()` runs first (the control).
_PROBE = r'''
import json, os, sys
flags_before = os.environ.get('XLA_FLAGS')
if sys.argv[1] == 'apply':
  from charjax.runtime import cpu_settings
  applied = cpu_settings.apply()
import charjax, charjax.train, charjax.predict, charjax.study, charjax.study.report
import charjax.study.specialise, charjax.study.baseline, charjax.nn.native_conv, charjax.cli
import numpy as np
from jax._src import xla_bridge
backends_started = bool(xla_bridge._backends)

def rss():
  return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

base = rss()
blocks = [np.ones(8 << 20) for _ in range(4)]
del blocks
print(json.dumps({'flags_before': flags_before, 'flags_after': os.environ.get('XLA_FLAGS'),
                  'kept_mb': (rss() - base) / 2**20, 'backends_started': backends_started}))
'''


def _probe(mode, env_extra=None):
  import os
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', cpu_settings.cpu_flags.OPT_OUT_ENV,
                      cpu_settings.host_memory.OPT_OUT_ENV, 'JAX_PLATFORMS')}
  env.update(env_extra or {})
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two processes importing everything
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc, /proc')
def test_importing_charjax_leaves_xla_flags_and_malloc_untouched():
  plain = _probe('import')
  assert plain['flags_before'] is None and plain['flags_after'] is None
  assert plain['kept_mb'] < 64  # freed blocks went back to the system
  assert not plain['backends_started']  # no JAX computation at import either
  applied = _probe('apply')  # the control: the same probe sees the settings when applied
  assert cpu_settings.cpu_flags.YNN_CONVOLUTION_OFF in applied['flags_after']
  assert applied['kept_mb'] > 192


@pytest.mark.slow  # a process of its own; the fast check below reads the same decision
def test_nothing_is_applied_for_an_accelerator_backend():
  on_gpu = _probe('apply', {'JAX_PLATFORMS': 'cuda'})
  assert on_gpu['flags_after'] is None and on_gpu['kept_mb'] < 64


def test_will_compute_on_cpu_reads_jax_platforms(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert cpu_settings.will_compute_on_cpu()
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu,cpu')
  assert not cpu_settings.will_compute_on_cpu()


def test_a_deprecation_raised_from_charjax_code_fails_the_tests():
  """pyproject's filterwarnings: a JAX/Flax/Optax API that charjax still calls and that the
  next release removes is caught here, by its DeprecationWarning, before the release."""
  import types  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  module = types.ModuleType('charjax.calls_an_old_api')
  exec('import warnings\ndef call():\n  warnings.warn("old API", DeprecationWarning)\n',
       module.__dict__)
  with pytest.raises(DeprecationWarning, match='old API'):
    module.call()
  warnings.warn('a library deprecation', DeprecationWarning)  # elsewhere: ignored
