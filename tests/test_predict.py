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


def test_polarity_colour_and_placement_do_not_change_the_cropped_input():
  base = predict.to_input(_glyph().astype(np.float32), 16, crop=True)
  inverted = predict.to_input(255.0 - _glyph(), 16, crop=True)
  np.testing.assert_allclose(inverted, base, atol=0.02)
  moved = predict.to_input(_glyph(128, 0.5, (0.2, -0.15)).astype(np.float32), 16, crop=True)
  assert np.abs(moved - base).mean() < 0.05  # cropped to the ink, so placement is undone
  assert base.shape == (16, 16, 1) and base.max() > 0.9 and base[0, 0, 0] < 0.05


def _save(image, path, **kwargs):
  image.save(path, **kwargs)
  return path


# The same 8-bit picture stored in other modes and bit depths, each with its full range.
ENCODINGS = {
    '16-bit.png': lambda g, d: _save(Image.fromarray(g.astype(np.uint16) * 257), d / 'a.png'),
    '12-bit.png': lambda g, d: _save(Image.fromarray(
        np.round(g.astype(np.float64) * 4095 / 255).astype(np.uint16)), d / 'a.png'),
    'float.tiff': lambda g, d: _save(Image.fromarray(g.astype(np.float32) / 255), d / 'a.tiff'),
    'float-0-255.tiff': lambda g, d: _save(Image.fromarray(g.astype(np.float32)), d / 'a.tiff'),
    '32-bit.tiff': lambda g, d: _save(Image.fromarray(g.astype(np.int32) * 8421504),
                                      d / 'a.tiff'),
    'palette.png': lambda g, d: _save(Image.fromarray(g).convert('P'), d / 'a.png'),
    'cmyk.jpg': lambda g, d: _save(Image.fromarray(g).convert('CMYK'), d / 'a.jpg', quality=100),
    'rgb.png': lambda g, d: _save(Image.fromarray(np.stack([g] * 3, -1)), d / 'a.png'),
    '1-bit.png': lambda g, d: _save(Image.fromarray(g).convert('1', dither=Image.NONE),
                                    d / 'a.png'),
}


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
def test_every_mode_and_bit_depth_is_read_with_its_real_range(encoding, tmp_path):
  glyph = _glyph()  # 20 (ink) and 235 (paper): a 1-bit copy is 0 and 255
  path = ENCODINGS[encoding](glyph, tmp_path)
  grey = predict.load_image(path)
  reference = glyph.astype(np.float32)
  if encoding == '1-bit.png':
    reference = np.where(glyph > 127, 255.0, 0.0).astype(np.float32)
  tolerance = 2.0 if encoding == 'cmyk.jpg' else 0.6
  np.testing.assert_allclose(grey, reference, atol=tolerance)
  np.testing.assert_allclose(predict.to_input(grey, 16), predict.to_input(reference, 16),
                             atol=tolerance / 255)


def test_dataset_images_get_exactly_the_training_input(tmp_path):
  """predict on the dataset's own files = the training preprocessing, pixel for pixel."""
  from charjax.data import preprocess
  from charjax.data import sources
  from tests.conftest import nhcd_files
  files = {n: b for n, b in nhcd_files(writers=1, samples=2).items() if n.endswith('.jpg')}
  names = sorted(files)[:40]
  stored = [sources.decode_grayscale(n, files[n]) for n in names]
  trained = preprocess.to_model_input(stored, ink_is_dark=True, image_size=36)
  for i, name in enumerate(names):
    path = tmp_path / name.replace('/', '_')
    path.write_bytes(files[name])
    assert predict.to_input(predict.load_image(path), 36).tobytes() == trained[i].tobytes()


def test_huge_images_are_refused_before_decoding(tmp_path):
  Image.new('L', (6000, 5000), 255).save(tmp_path / 'huge.png')  # 30 M pixels, ~30 KB
  with pytest.raises(ValueError, match='larger than the limit'):
    predict.load_image(tmp_path / 'huge.png')
  with pytest.raises(ValueError, match='larger than the limit'):
    predict.load_image(tmp_path / 'huge.png', max_pixels=1000)


def test_non_finite_scores_are_refused(tmp_path):
  Image.fromarray(_glyph()).save(tmp_path / 'one.png')
  nan_classifier = predict.Classifier(16, [str(i) for i in range(10)],
                                      lambda x: np.full((len(x), 10), np.nan))
  [record] = predict.predict(nan_classifier, [tmp_path / 'one.png'])
  assert 'NaN or infinite' in record['error'] and 'top' not in record
  with pytest.raises(ValueError, match='top_k'):
    predict.predict(nan_classifier, [tmp_path / 'one.png'], top_k=0)


def test_checkpoint_with_nan_parameters_is_refused(run_dir, tmp_path):
  import shutil
  import jax
  import orbax.checkpoint as ocp
  from charjax import checkpointing
  damaged = tmp_path / 'run'
  shutil.copytree(run_dir, damaged)
  checkpoints = damaged / 'checkpoints'
  epoch = runs.load_results(damaged)['best_epoch']
  _, _, state, _ = runs.restore_best(run_dir)
  bad = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.nan),
                                          state.params))
  shutil.rmtree(checkpoints / str(epoch))
  with checkpointing.manager(checkpoints) as mngr:
    checkpointing.save(mngr, epoch, bad, {'improved_epoch': epoch})
  with pytest.raises(checkpointing.CheckpointError, match='NaN or infinite'):
    predict.load_classifier(str(damaged), None)


@pytest.mark.slow  # a process per case; predict(top_k=0) is refused in the fast suite
@pytest.mark.parametrize('args,message', [
    (['--top_k=0'], '--top_k must be at least 1'),
    pytest.param(['--top_k=-2'], '--top_k must be at least 1', marks=pytest.mark.slow),
    pytest.param(['--max_pixels=0'], '--max_pixels must be positive', marks=pytest.mark.slow),
])
def test_cli_refuses_bad_flags(run_dir, tmp_path, args, message):
  Image.fromarray(_glyph()).save(tmp_path / 'one.png')
  proc = subprocess.run([sys.executable, '-m', 'charjax.predict', f'--workdir={run_dir}',
                         *args, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0 and message in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_cli_says_when_a_folder_holds_no_images(run_dir, tmp_path):
  (tmp_path / 'notes.txt').write_text('no images here')
  proc = subprocess.run([sys.executable, '-m', 'charjax.predict', f'--workdir={run_dir}',
                         str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'no image files' in proc.stderr


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
  from charjax.study import specialise
  from charjax import train
  from charjax.configs import all_classes
  config = all_classes.get_config()
  config.data_dir = str(nhcd_zip_dir)
  config.tfds_dir = str(tmp_path_factory.mktemp('tfds_all'))
  config.image_size, config.model.conv_features, config.model.dense_features = 16, (16, 16, 16), 8
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


def test_an_svc_with_a_subset_cnn_run_is_refused(svc_run, run_dir):
  with pytest.raises(runs.RunError, match='SubsetCNN run'):
    predict.load_classifier(str(run_dir), str(svc_run / 'svc_vowels.npz'))


def _damage(checkpoints, how, epoch=None):
  """Damages the checkpoint of `epoch` (default: the newest) in `checkpoints`."""
  epoch = epoch or max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  data = checkpoints / str(epoch) / 'default'
  if how == 'truncated':
    for f in (data / 'd').iterdir():
      f.write_bytes(f.read_bytes()[:100])
  elif how == 'manifest deleted':
    (data / 'manifest.ocdbt').unlink()
  elif how == 'bytes flipped':
    for f in (data / 'd').iterdir():
      raw = bytearray(f.read_bytes())
      for i in range(64, len(raw), 5):
        raw[i] ^= 0xFF
      f.write_bytes(bytes(raw))


@pytest.mark.parametrize('how', [
    'truncated', pytest.param('manifest deleted', marks=pytest.mark.slow),
    pytest.param('bytes flipped', marks=pytest.mark.slow)])
def test_a_damaged_checkpoint_is_one_clear_line(run_dir, tmp_path, how):
  import shutil
  damaged = tmp_path / 'run'
  shutil.copytree(run_dir, damaged)
  _damage(damaged / 'checkpoints', how, runs.load_results(damaged)['best_epoch'])
  Image.fromarray(_glyph()).save(tmp_path / 'one.png')
  proc = subprocess.run([sys.executable, '-m', 'charjax.predict', f'--workdir={damaged}',
                         str(tmp_path / 'one.png')], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1
  assert 'charjax: cannot load the classifier' in proc.stderr and 'damaged' in proc.stderr
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr
