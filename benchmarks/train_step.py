"""Times charjax's compiled forward pass, gradients, full train step and training epoch.

For each model, convolution implementation and batch size: compile time, then the median
of `--repeats` timed calls (after a warm-up call, each ending in `block_until_ready`);
ms per call, images/s, achieved GFLOP/s (FLOPs from XLA's cost analysis of the function
built with XLA's convolution, `timing.model_flops`, for every implementation alike; an
epoch counts its train steps' FLOPs) and that as a fraction of a plain jitted
matrix product timed in turns with it (`timing.interleaved`: `--repeats` rounds each time
the function, then the matmul; the fraction is the median of the rounds' ratios, since
this machine's matmul speed alone drifted from 122 to 173 GFLOP/s between runs). 'epoch'
is `train.train_epoch` over `timing.EPOCH_STEPS` batches: what training really runs.
Prints a table and writes JSON (backend and device recorded). Works on CPU and GPU.

  python -m benchmarks.train_step --batch_sizes=1,128,400,800 --out=runs/bench/train_step.json
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
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '128', '400', '800'], 'Batch sizes.')
_IMPLS = flags.DEFINE_list('conv_impls', ['xla', 'native', 'patches'],
                           'Convolution implementations (see charjax.nn.conv).')
_FNS = flags.DEFINE_list('fns', ['forward', 'gradients', 'train_step', 'epoch'],
                        'What to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (median taken).')
_PAUSE = flags.DEFINE_float('pause', timing.PAUSE, 'Idle seconds before each timed call.')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048, 'Side of the reference matrix product.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')

def main(argv):
  del argv
  device = jax.devices()[0]
  reference = timing.matmul_reference(_MATMUL.value, _REPEATS.value)
  matmul, matmul_flops = timing.matmul_call(_MATMUL.value)
  print(f'backend {jax.default_backend()}  device {device.device_kind}  '
        f'matmul {reference["size"]}^3 reference: {reference["gflops"]:.1f} GFLOP/s')
  rows = []
  header = f'{"model":<10}{"conv":<9}{"function":<12}{"batch":>6}{"ms":>10}{"img/s":>10}' \
           f'{"GFLOP/s":>9}{"of mm":>7}{"compile s":>10}'
  print(header)
  for model, impl in [(m, i) for m in _MODELS.value for i in _IMPLS.value]:
    for batch in map(int, _BATCH_SIZES.value):
      fns = timing.model_functions(model, batch, impl)
      reference_flops = timing.model_flops(model, batch)
      for name in _FNS.value:
        fn, args, images = fns[name]
        compiled, compile_s, _ = timing.compile_and_flops(fn, *args)
        if name == 'epoch':
          flops = reference_flops['train_step'] * images / batch
        else:
          flops = reference_flops[name]
        # In turns with the matmul: each round's fraction compares the same machine state.
        times = timing.interleaved({'fn': functools.partial(compiled, *args), 'mm': matmul},
                                   rounds=_REPEATS.value, pause=_PAUSE.value)
        seconds = statistics.median(times['fn'])
        row = {'model': model, 'conv_impl': impl, 'function': name, 'batch': batch,
               'ms': seconds * 1e3, 'images_per_s': images / seconds,
               'gflops': flops / seconds / 1e9, 'compile_s': compile_s,
               'matmul_gflops': statistics.median(matmul_flops / t / 1e9 for t in times['mm']),
               'fraction_of_matmul': timing.fraction_of_matmul(times['fn'], times['mm'], flops,
                                                               matmul_flops)}
        rows.append(row)
        print(f'{model:<10}{impl:<9}{name:<12}{batch:>6}{row["ms"]:>10.1f}'
              f'{row["images_per_s"]:>10.1f}{row["gflops"]:>9.1f}'
              f'{row["fraction_of_matmul"]:>7.2f}{compile_s:>10.2f}', flush=True)
  timing.write_json(_OUT.value, {
      'backend': jax.default_backend(), 'device_kind': device.device_kind,
      'jax_version': jax.__version__, 'matmul_reference': reference, 'rows': rows})


if __name__ == '__main__':
  cli.run(main)  # applies charjax.runtime.cpu_settings on CPU, as charjax's commands do
