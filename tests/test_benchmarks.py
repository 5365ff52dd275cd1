"""Smoke run of the benchmark scripts on tiny sizes (no timing asserts)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = __import__('pathlib').Path(__file__).resolve().parents[1]


# Subprocess smoke runs of the benchmark scripts compile whole models (20-40 s each, cold):
# CI runs them with -m slow; the default suite keeps the in-process checks below.
@pytest.mark.slow
def test_train_step_benchmark_writes_table_and_json(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.train_step', '--batch_sizes=2', '--repeats=1',
       '--pause=0', '--matmul_size=64', '--models=exp2', '--conv_impls=xla,native',
       f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result['backend'] == 'cpu' and result['matmul_reference']['gflops'] > 0
  got = {(r['conv_impl'], r['function']) for r in result['rows']}
  assert got == {(i, f) for i in ('xla', 'native')
                 for f in ('forward', 'gradients', 'train_step', 'epoch')}
  assert all(r['gflops'] > 0 and r['batch'] == 2 for r in result['rows'])
  # FLOPs come from the XLA-convolution functions for every implementation.
  flops = {(r['conv_impl'], r['function']): r['gflops'] * r['ms'] for r in result['rows']}
  for f in ('forward', 'gradients', 'train_step'):
    assert flops['native', f] == pytest.approx(flops['xla', f], rel=1e-9)
  step, epoch = ({r['function']: r for r in result['rows'] if r['conv_impl'] == 'xla'}[f]
                 for f in ('train_step', 'epoch'))
  assert epoch['gflops'] * epoch['ms'] == pytest.approx(  # an epoch is EPOCH_STEPS steps
      4 * step['gflops'] * step['ms'], rel=1e-6)
  assert 'train_step' in proc.stdout


@pytest.mark.slow
def test_peers_benchmark_runs_with_or_without_peers(tmp_path):
  out = tmp_path / 'peers.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.peers', '--batch_sizes=2', '--repeats=1', '--pause=0',
       '--models=exp3', '--matmul_size=64', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(out.read_text())['rows']
  assert [r['framework'] for r in rows[:4]] == ['charjax', 'charjax-epoch', 'charjax-bound',
                                                'charjax-bound-numpy']
  assert all(r['params'] == 3_597_722 and r['ms'] > 0 for r in rows)
  assert all('bound_speedup' in r and 'bound_numpy_speedup' in r for r in rows[4:])


@pytest.mark.slow  # compiles exp 2's step three ways (~20 s cold)
def test_peers_bound_is_the_matmul_scaled_to_the_train_steps_flops():
  from benchmarks import timing
  calls, params = timing.charjax_calls('exp2', 2, matmul_size=64)
  step_fn, step_args, _ = timing.model_functions('exp2', 2, 'xla')['train_step']
  step_flops = timing.compile_and_flops(step_fn, *step_args)[2]
  assert step_flops > 0 and timing.model_flops('exp2', 2)['train_step'] == step_flops
  assert calls['charjax-bound'][1] == pytest.approx(step_flops / (2 * 64 ** 3))
  assert calls['charjax-bound-numpy'][1] == calls['charjax-bound'][1]
  product = calls['charjax-bound-numpy'][0]()
  assert product.shape == (64, 64) and isinstance(product, np.ndarray)
  assert calls['charjax-epoch'][1] == pytest.approx(1 / timing.EPOCH_STEPS)
  assert params == 4_222_628


@pytest.mark.slow
def test_conv_layers_benchmark_times_every_pass_of_every_layer(tmp_path):
  out = tmp_path / 'conv_layers.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.conv_layers', '--models=exp2', '--batch=2', '--pause=0',
       '--repeats=1', '--matmul_size=64', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(out.read_text())['rows']
  # The first layer's input is the data: no input gradient.
  assert [(r['layer'], r['impl'], r['pass']) for r in rows] == [
      (layer, impl, p) for layer, passes in [('36x36x1->32', ('forward', 'weight grad')),
                                             ('34x34x32->64', ('forward', 'weight grad',
                                                               'input grad'))]
      for impl in ('xla', 'native') for p in passes]
  assert all(r['gflops'] > 0 and r['ms'] > 0 for r in rows)


def test_conv_layer_passes_are_the_convolution_and_its_gradients():
  from benchmarks import timing
  import jax
  for impl in ('xla', 'native'):
    passes = timing.conv_layer_passes(2, 6, 16, 16, input_grad=True, impl=impl)
    x, kernel, grad = passes['input grad'][1]
    out, vjp = jax.vjp(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')), x, kernel)
    dx, dk = vjp(grad)
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(passes['forward'][0](x, kernel), out, **tol)
    np.testing.assert_allclose(passes['weight grad'][0](x, kernel, grad), dk, **tol)
    np.testing.assert_allclose(passes['input grad'][0](x, kernel, grad), dx, **tol)


@pytest.mark.slow
def test_time_to_accuracy_benchmark_on_generated_data(prepared_dirs, tmp_path):
  data_dir, tfds_dir = prepared_dirs
  out = tmp_path / 'tta.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.time_to_accuracy', '--config=charjax/configs/numerals.py',
       f'--config.data_dir={data_dir}', f'--config.tfds_dir={tfds_dir}', '--config.num_epochs=2',
       '--config.image_size=16', '--config.model.conv_features=(4, 8)', '--config.model.dense_features=8',
       '--config.batch_size=32', '--target=0.0', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result['epoch_reached'] == 1 and [c['epoch'] for c in result['curve']] == [1, 2]
  assert result['seconds_total'] >= result['seconds_to_target'] > 0


@pytest.mark.slow  # compiles a train step per variant; CI runs it with -m slow
def test_ablations_benchmark_runs(tmp_path):
  out = tmp_path / 'ablations.json'
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.ablations', '--batch=2', '--repeats=1',
                         '--pause=0', f'--out={out}'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(out.read_text())['rows']
  assert [r['choice'] for r in rows] == ['pool', 'pool', 'relu', 'relu', 'conv', 'conv',
                                         'winograd', 'winograd', 'winograd', 'fusion', 'fusion',
                                         'dropout', 'dropout', 'dropout', 'activation',
                                         'activation', 'dense', 'dense', 'dense']
  assert all(r['images_per_s'] > 0 for r in rows)
  winograd, xla = rows[4:6]
  assert winograd['mflop_per_image'] < xla['mflop_per_image']  # fewer multiplications


@pytest.mark.slow  # the ablations' alternative convolution; runs with test_ablations_benchmark_runs
def test_winograd_convolution_is_the_same_convolution():
  shape, features = (2, 9, 8, 5), 7  # a 7x6 output: a padded half tile in one direction
  import jax
  import jax.numpy as jnp
  from benchmarks import winograd
  from charjax.nn import conv
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (3, 3, shape[-1], features)) / 3
  ref, got = conv.conv_xla(x, kernel), winograd.conv(x, kernel)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=1e-4 * float(jnp.abs(ref).max()))
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  for g_ref, g_got in zip(jax.grad(loss(conv.conv_xla), (0, 1))(x, kernel),
                          jax.grad(loss(winograd.conv), (0, 1))(x, kernel)):
    np.testing.assert_allclose(g_got, g_ref, atol=1e-4 * float(jnp.abs(g_ref).max()))


def test_svc_grid_benchmark_compares_equal_searches():
  from benchmarks import svc_grid
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 90)
  x = rng.normal(0, 1, (3, 8))[y] + rng.normal(0, 0.7, (90, 8))
  row = svc_grid.compare(x, y, C=[1, 10], gamma=[0.01, 0.1, 1], folds=3)
  assert row['samples'] == 90 and row['same_best_params']
  assert row['cells_differing'] == [] and row['max_cv_accuracy_gap'] < 1e-12 and row['sklearn_s'] > 0 and row['charjax_s'] > 0


def test_interleaved_times_every_call_once_per_round_after_a_warm_up():
  from benchmarks import timing
  order = []
  calls = {name: (lambda name=name: order.append(name)) for name in 'abc'}
  times = timing.interleaved(calls, rounds=4, pause=0.0)
  assert order[:3] == ['a', 'b', 'c']  # warm-up
  assert [order[i:i + 3] for i in range(3, 15, 3)] == timing.round_orders('abc', 4)
  assert {k: len(v) for k, v in times.items()} == {'a': 4, 'b': 4, 'c': 4}
  assert all(t >= 0 for v in times.values() for t in v)


def test_round_orders_are_seeded_permutations_that_vary():
  from benchmarks import timing
  orders = timing.round_orders(['a', 'b', 'c', 'd'], 8)
  assert all(sorted(order) == ['a', 'b', 'c', 'd'] for order in orders)
  assert orders == timing.round_orders(['a', 'b', 'c', 'd'], 8)
  assert len({order[0] for order in orders}) > 1
  assert len({tuple(order) for order in orders}) > 1


def test_fraction_of_matmul_is_the_median_of_per_round_ratios():
  from benchmarks import timing
  # Rounds: (10 / 1) / (20 / 0.5) = 0.25, (10 / 2) / (20 / 0.5) = 0.125, (10 / 1) / (20 / 1) = 0.5
  assert timing.fraction_of_matmul([1, 2, 1], [0.5, 0.5, 1], 10, 20) == 0.25


@pytest.mark.slow  # two CPU devices, two dtypes, both end-to-end trainings: a few minutes
def test_accelerators_benchmark_writes_json_and_table_on_cpu(nhcd_zip_dir, tmp_path):
  out, table = tmp_path / 'accel.json', tmp_path / 'accel.md'
  env = dict(__import__('os').environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             CHARJAX_TFDS_DIR=str(tmp_path / 'tfds'))
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.accelerators', '--models=exp2', '--batch_sizes=4',
       '--repeats=1', '--pause=0', '--matmul_size=64', '--fns=forward,train_step,epoch',
       '--end_to_end', '--end_to_end_epochs=1,1', f'--data_dir={nhcd_zip_dir}',
       f'--out={out}', f'--table={table}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result['device_count'] == 2 and result['jax_version']
  rows = result['rows']
  assert {(r['dtype'], r['devices'], r['function']) for r in rows} == {
      (d, n, f) for d in ('float32', 'bfloat16') for n in (1, 2)
      for f in ('forward', 'train_step', 'epoch')}
  assert all(r['images_per_s'] > 0 and r['tflops'] > 0 and r['compile_s'] > 0 for r in rows)
  assert all(r['scaling_efficiency'] == pytest.approx(1.0) for r in rows if r['devices'] == 1)
  assert [e['run'] for e in result['end_to_end']] == ['exp2 consonants', 'exp3 all classes']
  assert all(e['seconds'] > 0 and e['devices'] == 2 for e in result['end_to_end'])
  text = table.read_text()
  assert '| exp2 | bfloat16 | 4 | 2 | epoch |' in text and 'exp3 all classes' in text


@pytest.mark.slow  # starts charjax's command twice; the peers only where installed
def test_end_to_end_benchmark_on_generated_data(prepared_dirs, tmp_path):
  """charjax's run is timed from its metrics (training + validation per epoch); peers that
  are installed for this Python are trained too and checked for the same parameter count."""
  import importlib.util
  data_dir, tfds_dir = prepared_dirs
  peers = [p for p, module in (('keras', 'keras'), ('torch', 'torch'))
           if importlib.util.find_spec(module)]
  out = tmp_path / 'e2e.json'
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.end_to_end', '--config=numerals',
       f'--config.data_dir={data_dir}', f'--config.tfds_dir={tfds_dir}',
       '--config.image_size=16', '--config.model.conv_features=(16, 32)',
       '--config.model.dense_features=8', '--config.batch_size=32', '--config.augment=True',
       '--epochs=2', '--rounds=2', '--pause=0', f'--peers={",".join(peers)}', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'TMPDIR': str(scratch)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not list(scratch.glob('charjax-e2e-*'))  # its arrays and run folders are removed
  result = json.loads(out.read_text())
  assert len(result['rounds']) == 2 and result['train_images'] > 0
  # The peers are given charjax's augmentation (experiment 3's rotation and zoom).
  assert result['peer_spec']['augment'] == {'max_rotation_degrees': 15.0, 'max_zoom': 0.2}
  for r in result['rounds']:
    run = r['runs']['charjax']
    assert len(run['epoch_seconds']) == 2 and run['images_per_s'] > 0
    assert set(r['runs']) == {'charjax', *peers}
  assert set(result['median_images_per_s']) == {'charjax', *peers}
  assert out.with_suffix('.md').read_text().startswith('| framework |')
