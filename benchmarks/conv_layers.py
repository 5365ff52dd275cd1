"""Where a train step's convolution time goes: each conv layer's three passes, alone.

For every 3x3 convolution of the exp-2 and exp-3 networks at `--batch` (shapes as in the
model at the study's 36x36 input), times the forward convolution, its input gradient (not
for the first layer, whose input is the data) and its weight gradient, each compiled alone,
for XLA's convolution and charjax's native one (`--impls`),
with analytic FLOPs (2 * output pixels * 9 * in * out channels per image) as GFLOP/s and
as a fraction of a jitted matrix product: a layer's passes and the matmul are timed in
turns (`timing.interleaved`), and the fraction is the median of the rounds' ratios. The
`sum` rows add a layer's passes: that layer's share of a train step, before any fusion.

  python -m benchmarks.conv_layers --batch=800 --out=runs/bench/conv_layers.json
"""

from __future__ import annotations

import functools
import statistics

from absl import app
from absl import flags
import jax

from benchmarks import timing
from charjax import cli

_MODELS = flags.DEFINE_list('models', ['exp2', 'exp3'], 'Models: exp2 and/or exp3.')
_IMPLS = flags.DEFINE_list('impls', ['xla', 'native'], "Convolutions: 'xla' and/or 'native'.")
_BATCH = flags.DEFINE_integer('batch', 800, 'Batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timing rounds (median taken).')
_PAUSE = flags.DEFINE_float('pause', timing.PAUSE, 'Idle seconds before each timed call.')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048, 'Side of the reference matrix product.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')

# (input side, in channels, out channels) of each 3x3 valid convolution.
LAYERS = {
    'exp2': [(36, 1, 32), (34, 32, 64)],
    'exp3': [(36, 1, 128), (34, 128, 64), (16, 64, 32)],
}


def main(argv):
  del argv
  reference = timing.matmul_reference(_MATMUL.value, _REPEATS.value)
  matmul, matmul_flops = timing.matmul_call(_MATMUL.value)
  print(f'backend {jax.default_backend()}  matmul {reference["size"]}^3 reference: '
        f'{reference["gflops"]:.1f} GFLOP/s')
  print(f'{"model":<6}{"layer":<16}{"pass":<20}{"ms":>9}{"GFLOP/s":>9}{"of mm":>7}')
  rows = []
  for model in _MODELS.value:
    for i, (side, cin, cout) in enumerate(LAYERS[model]):
      flops = 2 * (side - 2) ** 2 * 9 * cin * cout * _BATCH.value
      calls = {}
      for impl in _IMPLS.value:
        passes = timing.conv_layer_passes(_BATCH.value, side, cin, cout, input_grad=i > 0,
                                          impl=impl)
        calls.update({f'{impl} {name}': functools.partial(jax.jit(fn), *args)
                      for name, (fn, args) in passes.items()})
      times = timing.interleaved({**calls, 'matmul': matmul}, rounds=_REPEATS.value,
                                   pause=_PAUSE.value)
      matmul_seconds = times.pop('matmul')
      layer = f'{side}x{side}x{cin}->{cout}'
      totals = dict.fromkeys(_IMPLS.value, 0.0)
      for name, seconds in times.items():
        median = statistics.median(seconds)
        impl, pass_name = name.split(' ', 1)
        totals[impl] += median
        rows.append({'model': model, 'layer': layer, 'impl': impl, 'pass': pass_name,
                     'batch': _BATCH.value,
                     'ms': median * 1e3, 'gflops': flops / median / 1e9,
                     'fraction_of_matmul': timing.fraction_of_matmul(
                         seconds, matmul_seconds, flops, matmul_flops)})
        print(f'{model:<6}{layer:<16}{name:<20}{median * 1e3:>9.1f}'
              f'{rows[-1]["gflops"]:>9.1f}{rows[-1]["fraction_of_matmul"]:>7.2f}', flush=True)
      for impl, total in totals.items():
        print(f'{model:<6}{layer:<16}{impl + " sum":<20}{total * 1e3:>9.1f}')
  timing.write_json(_OUT.value, {'backend': jax.default_backend(), 'batch': _BATCH.value,
                                 'matmul_reference': reference, 'rows': rows})


if __name__ == '__main__':
  cli.run(main)  # applies charjax.runtime.cpu_settings on CPU, as charjax's commands do
