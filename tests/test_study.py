"""The whole study on generated data: experiments 1-3, SVCs, feature map and report."""

import json

import numpy as np
import pytest

from charjax.study import report
from charjax.study import specialise
from charjax.study import experiments as study
from charjax.study import svc

# Trains five small networks (~100 s on 2 cores): run with `pytest -m slow` (CI does).
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def quick_study(prepared_dirs, tmp_path_factory):
  data_dir, tfds_dir = prepared_dirs
  workdir = tmp_path_factory.mktemp('study')
  overrides = {'data_dir': str(data_dir), 'tfds_dir': str(tfds_dir), 'image_size': 16,
               'batch_size': 32, 'eval_batch_size': 64, 'model.dense_features': 16,
               'svc_C': (10.0,), 'svc_gamma': (0.01,), 'conv_impl': 'patches'}
  record = study.run(workdir, quick=True, overrides=overrides)
  return workdir, record, overrides


def test_quick_study_runs_every_step_and_writes_the_report(quick_study):
  workdir, record, _ = quick_study
  assert set(record['steps']) == {name for name, _, _ in study.steps(quick=True)}
  for _, rel, _ in study.steps(quick=True):
    assert (workdir / rel / 'results.json').exists(), rel
  text = (workdir / 'report.md').read_text()
  for subset in report.SUBSETS:
    assert f'| {subset} | **' in text
  assert '(study 99.7, ' in text and '(study 75.0, ' in text
  for figure in ('curves_exp2_numerals.png', 'confusion_exp2_consonants.png',
                 'pca_components.png', 'pca_reconstructions.png', 'augmented_samples.png',
                 'feature_map_all.png', 'feature_map_vowels.png'):
    assert (workdir / 'figures' / figure).stat().st_size > 1000, figure
    assert f'figures/{figure}' in text


def test_step_times_come_from_each_run(quick_study):
  workdir, _, _ = quick_study
  rows = {r['step']: r for r in report.step_times(workdir)}
  assert set(rows) == {rel for _, rel, _ in study.steps(quick=True)}
  exp3 = json.loads((workdir / 'exp3/cnn/results.json').read_text())
  assert rows['exp3/cnn']['wall_clock_s'] == exp3['wall_clock_s']
  assert rows['exp3/cnn']['epoch_seconds'] == pytest.approx(exp3['train_seconds'])
  assert rows['exp3/cnn']['resumed_from_epoch'] == 0
  assert rows['exp1/numerals']['epoch_seconds'] is None
  assert '| exp3/svc | ' in (workdir / 'report.md').read_text()


def test_table_numbers_come_from_the_runs(quick_study):
  workdir, _, _ = quick_study
  table = report.measured(workdir)
  exp2 = json.loads((workdir / 'exp2/vowels/results.json').read_text())
  svcs = json.loads((workdir / 'exp3/svc/results.json').read_text())
  assert table['vowels'][1] == pytest.approx(100 * exp2['test_accuracy'])
  assert table['consonants'][0] == pytest.approx(
      100 * svcs['subsets']['consonants']['test_accuracy'])
  sizes = report.test_sizes(workdir)
  assert sizes['vowels'][1] == exp2['split_sizes']['test'] == sizes['vowels'][2]
  assert sizes['consonants'][0] == svcs['subsets']['consonants']['test_size']
  assert '| test images | ' in (workdir / 'report.md').read_text()


def test_exp3_configs_and_subset_cut(quick_study):
  workdir, _, _ = quick_study
  config = json.loads((workdir / 'exp3/cnn/config.json').read_text())
  assert config['augment'] is True and config['subset'] == 'all'
  assert json.loads((workdir / 'exp3/feature_map/config.json').read_text())['model'][
      'bottleneck_features'] == 2
  results = json.loads((workdir / 'exp3/svc/results.json').read_text())
  splits = json.loads((workdir / 'exp3/cnn/splits.json').read_text())
  assert results['feature_dim'] == 16
  ranges = specialise.subset_ranges()
  assert ranges == {'numerals': (0, 10), 'vowels': (10, 22), 'consonants': (22, 58)}
  assert sum(r['test_size'] for r in results['subsets'].values()) == len(splits['test'])


def test_saved_svc_reproduces_the_reported_accuracy(quick_study):
  workdir, _, _ = quick_study
  arrays, meta = svc.load(workdir / 'exp3/svc/svc_vowels.npz')
  assert meta['subset'] == 'vowels' and len(meta['class_names']) == 12
  assert len(arrays['classes']) == 12 and np.all(np.isfinite(arrays['dual_coef']))


def test_rerun_skips_finished_steps(quick_study):
  workdir, _, overrides = quick_study
  before = {p: p.stat().st_mtime for p in workdir.glob('*/*/results.json')}
  again = study.run(workdir, quick=True, overrides=overrides)
  assert {p: p.stat().st_mtime for p in workdir.glob('*/*/results.json')} == before
  assert again['steps'].keys() == set(before and again['steps'])


def test_predict_with_the_saved_svc(quick_study, tmp_path):
  import subprocess
  import sys
  from PIL import Image
  from tests.test_predict import _glyph
  from tests.test_train import REPO
  workdir, _, _ = quick_study
  Image.fromarray(_glyph()).save(tmp_path / 'x.png')
  proc = subprocess.run([sys.executable, '-m', 'charjax.predict', '--json',
                         f'--svc={workdir}/exp3/svc/svc_vowels.npz', str(tmp_path / 'x.png')],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  top = json.loads(proc.stdout)[0]['top']
  assert len(top) == 3 and all(t['glyph'] for t in top)
  assert top[0]['score'] >= top[1]['score'] and top[0]['score'] <= 1.0
