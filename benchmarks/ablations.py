"""Design choices of charjax's models, each timed against its alternative in one run.

- `pool`: max-pooling as `nn.max_pool` (its gradient is XLA's select-and-scatter) versus
  charjax's `pooling.max_pool_2x2` (a reshape and a max, elementwise gradient);
- `relu`: ReLU before max-pooling (as the study writes the network) versus after it
  (charjax: identical output, a quarter of the ReLU's work);
- `conv`: XLA's convolution versus Winograd's F(2x2, 3x3) algorithm written in
  jax.numpy (`benchmarks.winograd.conv`: 16 instead of 36 multiplications per 2x2 output
  tile, as 16 batched matrix products, but inputs and outputs expanded 4x in memory by
  the tile transforms);
- `winograd`: charjax's native convolution (`conv_impl='native'`) with register-tiled
  direct kernels, with Winograd F(2x2, 3x3) kernels only, and with F(4x4, 3x3) where the
  shapes allow (charjax: transforms and products per chunk of tiles in cache), for all
  three passes;
- `fusion`: the native convolution followed by `pooling.max_pool_2x2` versus the two fused
  (`native_conv.conv_pool`: each output tile pooled as it is made, the gradients routed
  through the saved positions inside the native kernels);
- `dropout`: `flax.linen.Dropout` (a float32 uniform, one threefry call, per element)
  versus `dropout.Dropout` (8 or 16 random bits per element) with threefry's words and
  with the counter hash's (charjax), in the network with the native convolution
  and every dropout a module of its own (none fused into a convolution);
- `activation`: a convolution's ReLU and dropout as XLA operations after the native
  convolution versus in the convolution's own pass (`native_conv.conv_relu_dropout`, the
  same masks: charjax);
- `dense`: a dense layer's product in full, then ReLU and dropout, versus `dense.Dense`
  computing only what its dropout keeps (forward, and backward products skipping the
  gradient's zeros) at keep probabilities up to `SPARSE_MAX_KEEP` (charjax), and at any.

Lone jitted train step of the `--model` network; the variants of a choice are timed in
turns (`timing.interleaved`), `--repeats` rounds, medians reported.

  python -m benchmarks.ablations --batch=800 --out=runs/bench/ablations.json
  python -m benchmarks.ablations --model=exp3 --batch=400 --choices=dropout
  python -m benchmarks.ablations --choices=dense --repeats=5
"""

from __future__ import annotations

import functools
import statistics

from absl import app
from absl import flags
import flax.linen as nn
import jax

from benchmarks import timing
from benchmarks import winograd
from charjax import cli
from charjax.nn import conv
from charjax.nn import dense
from charjax.nn import dropout
from charjax.nn import native_conv
from charjax.nn import pooling

_MODEL = flags.DEFINE_enum('model', 'exp2', list(timing.MODELS), 'Network timed.')
_BATCH = flags.DEFINE_integer('batch', 800, 'Batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per variant (median taken).')
_PAUSE = flags.DEFINE_float('pause', timing.PAUSE, 'Idle seconds before each timed call.')
_CHOICES = flags.DEFINE_list('choices',
                             ['pool', 'relu', 'conv', 'winograd', 'fusion', 'dropout',
                              'activation', 'dense'],
                               'Design choices to time (all by default).')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')


def _flax_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _never(*shapes):
  del shapes
  return False


def _relu_first_pool(pool):
  # ReLU is idempotent: pooling relu(x) then applying the model's ReLU again equals
  # relu-before-pool, with the full-size ReLU that charjax avoids.
  return lambda x: pool(nn.relu(x))


_UNFUSED = (native_conv, 'FUSE_ACTIVATION', False)
_DENSE_UNFUSED = (dense, 'SPARSE_DROPOUT', False)

# choice -> variant -> (module, attribute, replacement looked up when the model is traced),
# or a list of those
VARIANTS = {
    'pool': {'flax nn.max_pool': (pooling, 'max_pool_2x2', _flax_pool),
             'reshape max (charjax)': (pooling, 'max_pool_2x2', pooling.max_pool_2x2)},
    'relu': {'relu before pool': (pooling, 'max_pool_2x2',
                                  _relu_first_pool(pooling.max_pool_2x2)),
             'relu after pool (charjax)': (pooling, 'max_pool_2x2', pooling.max_pool_2x2)},
    'conv': {'winograd F(2x2,3x3)': (conv, 'conv_xla', winograd.conv),
             'xla (charjax)': (conv, 'conv_xla', conv.conv_xla)},
    'winograd': {'native direct': (native_conv, 'WINOGRAD', 0),
                 'native F(2x2,3x3)': (native_conv, 'WINOGRAD', 2),
                 'native F(4x4,3x3) (charjax)': (native_conv, 'WINOGRAD', 4)},
    'fusion': {'conv, then max-pool': (native_conv, 'supports_pool', _never),
               'fused conv-pool (charjax)': (native_conv, 'supports_pool',
                                             native_conv.supports_pool)},
    # Every dropout layer a `Dropout` module (none fused into a convolution's pass).
    'dropout': {'flax nn.Dropout': [(dropout, 'Dropout', nn.Dropout), _UNFUSED,
                                    _DENSE_UNFUSED],
                'packed threefry bits': [(dropout, 'Dropout',
                                          functools.partial(dropout.Dropout,
                                                            generator='threefry')), _UNFUSED,
                                         _DENSE_UNFUSED],
                'packed hash bits (charjax)': [(dropout, 'Dropout', dropout.Dropout),
                                               _UNFUSED, _DENSE_UNFUSED]},
    'activation': {'relu, dropout after the conv': _UNFUSED,
                   'in the conv\'s pass (charjax)': (native_conv, 'FUSE_ACTIVATION', True)},
    'dense': {'full product, then relu and dropout': _DENSE_UNFUSED,
              'only the kept products at any keep': [(dense, 'SPARSE_DROPOUT', True),
                                                     (dense, 'SPARSE_MAX_KEEP', 1.0)],
              'only the kept products, keep <= SPARSE_MAX_KEEP (charjax)': [
                  (dense, 'SPARSE_DROPOUT', True),
                  (dense, 'SPARSE_MAX_KEEP', dense.SPARSE_MAX_KEEP)]},
}
# The convolution implementation each choice's models use.
CONV_IMPL = {'winograd': 'native', 'fusion': 'native', 'dropout': 'native',
             'activation': 'native', 'dense': 'native'}


def main(argv):
  del argv
  unknown = set(_CHOICES.value) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f'Unknown --choices {sorted(unknown)}: expected some of {list(VARIANTS)}.')
  rows = []
  for choice in _CHOICES.value:
    calls, flops = {}, {}
    for name, patches in VARIANTS[choice].items():
      patches = patches if isinstance(patches, list) else [patches]
      originals = [(module, attribute, getattr(module, attribute))
                   for module, attribute, _ in patches]
      for module, attribute, replacement in patches:
        setattr(module, attribute, replacement)
      try:
        jax.clear_caches()  # equal modules would otherwise reuse the previous trace
        fns = timing.model_functions(_MODEL.value, _BATCH.value, CONV_IMPL.get(choice, 'xla'))
        fn, args, images = fns['train_step']
        compiled, _, flops[name] = timing.compile_and_flops(fn, *args)
      finally:
        for module, attribute, original in originals:
          setattr(module, attribute, original)
      calls[name] = functools.partial(compiled, *args)
    times = timing.interleaved(calls, rounds=_REPEATS.value, pause=_PAUSE.value)
    for name, seconds in times.items():
      median = statistics.median(seconds)
      rows.append({'choice': choice, 'variant': name, 'model': _MODEL.value,
                   'batch': _BATCH.value,
                   'ms': median * 1e3, 'images_per_s': images / median,
                   'ms_per_round': [round(t * 1e3, 1) for t in seconds],
                   # XLA's cost analysis counts no FLOPs inside the native custom calls.
                   'mflop_per_image': (flops[name] / images / 1e6
                                       if flops[name] and choice not in CONV_IMPL else None)})
      print(f'{choice:<10}{name:<28}{median * 1e3:>10.1f} ms{images / median:>10.1f} img/s'
            f'{rows[-1]["mflop_per_image"] or float("nan"):>10.1f} MFLOP/img', flush=True)
  timing.write_json(_OUT.value, {'backend': jax.default_backend(), 'rows': rows})


if __name__ == '__main__':
  cli.run(main)  # applies charjax.runtime.cpu_settings on CPU, as charjax's commands do
