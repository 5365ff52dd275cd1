"""The study's networks on whatever backend JAX finds: per dtype, batch size and device count.

For exp 2 and exp 3 (`--models`), float32 and bfloat16 (`--dtypes`), each batch size
(`--batch_sizes`, e.g. 800 and a large 8192) and each number of devices (`--device_counts`,
default 1, 2, 4, ... up to all), it compiles and times the forward pass, the gradients,
the train step and a training epoch (`train.train_epoch`, `timing.EPOCH_STEPS` batches)
data-parallel over a mesh of that many devices, as `charjax.train` runs them. Each is
timed in turns with a matrix product of the same dtype (`timing.interleaved`), so the
fraction of the matmul's rate compares the same machine state. Reported: ms, images/s,
TFLOP/s (XLA's FLOP count of the single-device function with XLA's convolution: the
arithmetic, whatever kernels run), fraction of the matmul, scaling efficiency (images/s
on N devices over N times images/s on one), compile seconds, device name and JAX
version. `--end_to_end` adds the wall-clock a user cares about: exp 2 on the consonants
and exp 3 on all 58 classes, each for `--end_to_end_epochs` epochs of training and
validation (the study's 180 and 150 by default), compilation reported apart. Writes JSON
(`--out`) and a Markdown table (`--table`).

  python -m benchmarks.accelerators --batch_sizes=800,8192 --out=runs/bench/accel.json \
      --table=runs/bench/accel.md --end_to_end
"""

from __future__ import annotations

import functools
import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import timing
from charjax import cli
from charjax.runtime import sharding

_MODELS = flags.DEFINE_list('models', ['exp2', 'exp3'], 'Models: exp2 and/or exp3.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['800', '8192'], 'Global batch sizes.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_DEVICE_COUNTS = flags.DEFINE_list('device_counts', [], 'Devices per mesh (default: 1, 2, '
                                   '4, ... up to all JAX sees).')
_FNS = flags.DEFINE_list('fns', ['forward', 'gradients', 'train_step', 'epoch'],
                         'What to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds (median taken).')
_PAUSE = flags.DEFINE_float('pause', 0.5, 'Idle seconds before each timed call.')
_MATMUL = flags.DEFINE_integer('matmul_size', 4096, 'Side of the reference matrix product.')
_END_TO_END = flags.DEFINE_bool('end_to_end', False, 'Also time whole trainings on NHCD.')
_E2E_EPOCHS = flags.DEFINE_list('end_to_end_epochs', ['180', '150'],
                                'Epochs of the exp-2 and exp-3 end-to-end trainings.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'NHCD location for --end_to_end.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path.')
_TABLE = flags.DEFINE_string('table', '', 'Markdown table output path.')


def device_counts() -> list[int]:
  if _DEVICE_COUNTS.value:
    return [int(n) for n in _DEVICE_COUNTS.value]
  total, counts, n = jax.device_count(), [], 1
  while n < total:
    counts.append(n)
    n *= 2
  return counts + [total]


def time_functions(model: str, batch: int, dtype: str, devices: int, flops: dict,
                   matmuls: dict) -> list[dict]:
  """One row per function of `model` at global `batch`, on a mesh of `devices`."""
  mesh = sharding.make_mesh(devices)
  rows = []
  with jax.set_mesh(mesh):
    fns = timing.model_functions(model, batch, 'auto', jnp.dtype(dtype), mesh=mesh)
    for name in _FNS.value:
      fn, args, images = fns[name]
      compiled, compile_s, _ = timing.compile_and_flops(fn, *args)
      work = flops['train_step'] * images / batch if name == 'epoch' else flops[name]
      mm, mm_flops = matmuls[dtype]
      times = timing.interleaved({'fn': functools.partial(compiled, *args), 'mm': mm},
                                 rounds=_REPEATS.value, pause=_PAUSE.value)
      seconds = statistics.median(times['fn'])
      rows.append({
          'model': model, 'dtype': dtype, 'batch': batch, 'devices': devices,
          'function': name, 'ms': seconds * 1e3, 'images_per_s': images / seconds,
          'tflops': work / seconds / 1e12, 'compile_s': compile_s,
          'matmul_tflops': statistics.median(mm_flops / t / 1e12 for t in times['mm']),
          'fraction_of_matmul': timing.fraction_of_matmul(times['fn'], times['mm'], work,
                                                          mm_flops)})
  return rows


def add_scaling(rows: list[dict]) -> None:
  """`scaling_efficiency`: images/s on N devices / (N x images/s on one), same settings."""
  single = {(r['model'], r['dtype'], r['batch'], r['function']): r['images_per_s']
            for r in rows if r['devices'] == 1}
  for r in rows:
    base = single.get((r['model'], r['dtype'], r['batch'], r['function']))
    r['scaling_efficiency'] = r['images_per_s'] / (r['devices'] * base) if base else None


def end_to_end(epochs: list[int]) -> list[dict]:
  """Wall-clock of exp 2 (consonants) and exp 3 (58 classes) trainings with validation."""
  from charjax.data import augment
  from charjax.nn import conv
  from charjax.data import input_pipeline
  from charjax import train
  from charjax.configs import all_classes
  from charjax.configs import consonants
  out = []
  for get_config, name, n_epochs in ((consonants.get_config, 'exp2 consonants', epochs[0]),
                                     (all_classes.get_config, 'exp3 all classes', epochs[1])):
    config = get_config()
    config.data_dir = _DATA_DIR.value
    mesh = train.make_mesh(config)
    with jax.set_mesh(mesh):
      _, data = input_pipeline.load_splits(config)
      whole = sharding.replicated(mesh)
      x, y = jax.device_put((data.images['train'], data.labels['train']), whole)
      vx, vy = jax.device_put((data.images['validation'], data.labels['validation']), whole)
      model = train.create_model(config, len(data.class_names))
      state = jax.device_put(train.create_train_state(config, model, jax.random.key(0),
                                                      config.image_size), whole)
      unroll = conv.loop_unroll(config.conv_impl, dtype=config.dtype)
      eval_batch = -(-min(config.eval_batch_size, len(vy)) // mesh.size) * mesh.size
      run_epoch = functools.partial(train.train_epoch, batch_size=config.batch_size,
                                    unroll=unroll, augmentation=augment.from_config(config))
      validate = functools.partial(train.evaluate, batch_size=eval_batch, unroll=unroll)
      start = time.perf_counter()  # compilation: the first epoch and validation, apart
      lowered = train.train_epoch.lower(state, x, y, jax.random.key(1), 0,
                                        batch_size=config.batch_size, unroll=unroll,
                                        augmentation=augment.from_config(config))
      lowered.compile()
      train.evaluate.lower(state, vx, vy, batch_size=eval_batch, unroll=unroll).compile()
      compile_s = time.perf_counter() - start
      jax.block_until_ready(run_epoch(jax.tree.map(jnp.copy, state), x, y,
                                      jax.random.key(1), 0))
      start = time.perf_counter()
      for epoch in range(1, n_epochs + 1):
        state, sums = run_epoch(state, x, y, jax.random.key(1), epoch)
        metrics = validate(state, vx, vy)
      jax.block_until_ready((sums, metrics))
      seconds = time.perf_counter() - start
    out.append({'run': name, 'epochs': n_epochs, 'devices': int(mesh.size),
                'train_images': int(len(y)), 'seconds': seconds, 'compile_s': compile_s,
                'val_accuracy': float(metrics['correct']) / float(metrics['count'])})
    print(f'{name}: {n_epochs} epochs of training + validation in {seconds:.1f} s '
          f'(compile {compile_s:.1f} s) on {mesh.size} device(s)', flush=True)
  return out


def markdown(result: dict) -> str:
  lines = [f'{result["device_kind"]} x {result["device_count"]} ({result["backend"]}), '
           f'JAX {result["jax_version"]}', '',
           '| model | dtype | batch | devices | function | ms | images/s | TFLOP/s | of matmul '
           '| scaling | compile s |', '|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|']
  for r in result['rows']:
    scaling = '' if r['scaling_efficiency'] is None else f'{r["scaling_efficiency"]:.2f}'
    lines.append(f'| {r["model"]} | {r["dtype"]} | {r["batch"]} | {r["devices"]} | '
                 f'{r["function"]} | {r["ms"]:.2f} | {r["images_per_s"]:.0f} | '
                 f'{r["tflops"]:.3f} | {r["fraction_of_matmul"]:.2f} | {scaling} | '
                 f'{r["compile_s"]:.1f} |')
  if result.get('end_to_end'):
    lines += ['', '| run | epochs | devices | seconds (training + validation) | compile s | '
              'val accuracy |', '|---|---:|---:|---:|---:|---:|']
    for e in result['end_to_end']:
      lines.append(f'| {e["run"]} | {e["epochs"]} | {e["devices"]} | {e["seconds"]:.2f} | '
                   f'{e["compile_s"]:.1f} | {e["val_accuracy"]:.4f} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  device = jax.devices()[0]
  matmuls = {d: timing.matmul_call(_MATMUL.value, jnp.dtype(d)) for d in _DTYPES.value}
  rows = []
  for model in _MODELS.value:
    for batch in map(int, _BATCH_SIZES.value):
      flops = timing.model_flops(model, batch)
      for dtype in _DTYPES.value:
        for devices in device_counts():
          if batch % devices:
            print(f'skip {model} batch {batch} on {devices} devices: not divisible')
            continue
          for r in time_functions(model, batch, dtype, devices, flops, matmuls):
            rows.append(r)
            print(f'{model} {dtype:<9} batch {batch:>5} x{devices} {r["function"]:<11}'
                  f'{r["ms"]:>10.2f} ms {r["images_per_s"]:>10.0f} img/s '
                  f'{r["tflops"]:>8.3f} TFLOP/s {r["fraction_of_matmul"]:>5.2f} of matmul '
                  f'compile {r["compile_s"]:.1f} s', flush=True)
  add_scaling(rows)
  result = {'backend': jax.default_backend(), 'device_kind': device.device_kind,
            'device_count': jax.device_count(), 'jax_version': jax.__version__, 'rows': rows}
  if _END_TO_END.value:
    result['end_to_end'] = end_to_end([int(e) for e in _E2E_EPOCHS.value])
  timing.write_json(_OUT.value, result)
  if _TABLE.value:
    import pathlib
    path = pathlib.Path(_TABLE.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result))
    print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
