"""`python -m charjax.predict` on generated images of several formats, sizes and polarities."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from charjax import predict
from charjax import runs
from tests.test_train import REPO


@pytest.fixture
def run_dir(reference_run):
  return reference_run[1]


def _glyph(size=64, scale=0.5, offset=(0, 0)):
  """A dark-on-light 'character' (a ring and a bar) somewhere on a light page."""
  r, c = np.mgrid[:size, :size] / size
  cy, cx = 0.5 + offset[0], 0.5 + offset[1]
  ring = np.abs(np.hypot(r - cy, c - cx) - 0.3 * scale) < 0.06 * scale
  bar = (np.abs(c - cx) < 0.04 * scale) & (np.abs(r - cy) < 0.45 * scale)
  return np.where(ring | bar, 20, 235).astype(np.uint8)


def test_polarity_colour_and_placement_do_not_change_the_input():
  base = predict.to_input(predict._normalise(_glyph() / 255.0), 16)
  inverted = predict.to_input(predict._normalise(1 - _glyph() / 255.0), 16)
  np.testing.assert_allclose(inverted, base, atol=0.02)
  moved = predict.to_input(predict._normalise(_glyph(128, 0.5, (0.2, -0.15)) / 255.0), 16)
  assert np.abs(moved - base).mean() < 0.05  # cropped to the ink, so placement is undone
  assert base.shape == (16, 16, 1) and base.max() > 0.9 and base[0, 0, 0] < 0.05


def _write_images(folder):
  folder.mkdir()
  glyph = _glyph()
  Image.fromarray(glyph).save(folder / 'dark_on_light.png')
  Image.fromarray(255 - _glyph(200, 0.7)).save(folder / 'light_on_dark.jpg', quality=90)
  Image.fromarray(np.stack([glyph] * 3, -1)).save(folder / 'colour.bmp')
  Image.fromarray(glyph).convert('P').save(folder / 'palette.gif')
  Image.fromarray(glyph).save(folder / 'scan.tiff')
  Image.fromarray(glyph).save(folder / 'small.webp')
  rgba = np.zeros((40, 30, 4), np.uint8)
  rgba[..., 3] = (_glyph(40)[:, 5:35] < 128) * 255  # black ink on a transparent ground
  Image.fromarray(rgba, 'RGBA').save(folder / 'transparent.png')
  (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
  Image.fromarray(np.full((20, 20), 255, np.uint8)).save(folder / 'blank.png')
  return folder


def test_cli_classifies_every_readable_file_and_reports_the_others(run_dir, tmp_path):
  folder = _write_images(tmp_path / 'images')
  proc = subprocess.run([sys.executable, '-m', 'charjax.predict', f'--workdir={run_dir}',
                         '--json', '--top_k=2', str(folder)], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  records = {r['file'].split('/')[-1]: r for r in json.loads(proc.stdout)}
  assert len(records) == 9
  assert set(n for n, r in records.items() if 'error' in r) == {'broken.png', 'blank.png'}
  assert 'blank' in records['blank.png']['error']
  for name, r in records.items():
    if 'error' in r:
      continue
    assert len(r['top']) == 2 and r['top'][0]['score'] >= r['top'][1]['score']
    assert r['top'][0]['glyph'] and r['top'][0]['latin'].isdigit()
    assert 0.0 <= r['top'][1]['score'] <= r['top'][0]['score'] <= 1.0
  same = {records[n]['top'][0]['index'] for n in ('dark_on_light.png', 'colour.bmp',
                                                  'scan.tiff', 'palette.gif')}
  assert len(same) == 1  # the same picture in other formats: the same answer
  assert '2 of 9 files could not be classified' in proc.stderr


def test_table_output(run_dir, tmp_path):
  Image.fromarray(_glyph()).save(tmp_path / 'one.png')
  (tmp_path / 'two.png').write_bytes(b'not an image')
  classifier = predict.load_classifier(str(run_dir), None)
  records = predict.predict(classifier, predict.collect([str(tmp_path)]), top_k=3)
  table = predict.format_table(records).splitlines()
  assert table[0].split() == ['file', 'rank', 'class', 'glyph', 'score']
  assert len(table) == 1 + 3 + 1 and 'FAILED' in table[-1] and 'one.png' in table[1]


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
  with pytest.raises(runs.RunError, match='not a charjax run'):
    predict.load_classifier(str(tmp_path), None)


def test_split_name():
  assert predict.split_name('ka (क)') == ('ka', 'क')
  assert predict.split_name('7') == ('7', '')


@pytest.fixture(scope='module')
def svc_run(nhcd_zip_dir, tmp_path_factory):
  """A tiny 58-class network (1 epoch) and SVCs on its features, as experiment 3 makes."""
  from charjax import specialise
  from charjax import train
  from configs import all_classes
  config = all_classes.get_config()
  config.data_dir = str(nhcd_zip_dir)
  config.tfds_dir = str(tmp_path_factory.mktemp('tfds_all'))
  config.image_size, config.conv_features, config.dense_features = 16, (4, 4, 4), 8
  config.batch_size, config.eval_batch_size, config.num_epochs = 64, 100, 1
  cnn = tmp_path_factory.mktemp('svc_run') / 'cnn'
  train.train_and_evaluate(config, str(cnn))
  specialise.run(cnn, cnn.parent / 'svc', C=(10.0,), gamma=(0.1,), folds=2)
  return cnn.parent / 'svc'


def test_predict_with_an_svc_on_cnn_features(svc_run, tmp_path):
  Image.fromarray(_glyph()).save(tmp_path / 'a.png')
  Image.fromarray(255 - _glyph(50)).save(tmp_path / 'b.jpg')
  classifier = predict.load_classifier(None, str(svc_run / 'svc_vowels.npz'))
  assert len(classifier.class_names) == 12
  records = predict.predict(classifier, predict.collect([str(tmp_path)]), top_k=3)
  assert [len(r['top']) for r in records] == [3, 3]
  for r in records:
    scores = [t['score'] for t in r['top']]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] and scores[0] <= 1
    assert all(t['glyph'] for t in r['top'])
