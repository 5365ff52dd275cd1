"""charjax.evaluate: a finished run scored on its own split, a dataset split and folders."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from charjax import evaluate
from tests import conftest

REPO = conftest.pathlib.Path(__file__).resolve().parents[1]


def test_the_runs_own_test_split_gives_its_results(reference_run):
  _, workdir = reference_run
  results = json.loads((workdir / 'results.json').read_text())
  report = evaluate.evaluate(str(workdir), 'test')
  assert report['images'] == results['split_sizes']['test']
  assert report['accuracy'] == pytest.approx(results['test_accuracy'])
  assert report['confusion_matrix'] == results['confusion_matrix']
  assert report['test_protocol'] == 'carved'
  assert report['trained_on'] is False
  assert report['per_subset_accuracy'] == results['per_subset_accuracy'] == {}
  # Every error listed once, by the file name splits.json records for the test split, and
  # the list agrees with the confusion matrix's off-diagonal counts.
  wrong = report['misclassified']
  confusion = np.array(report['confusion_matrix'])
  assert len(wrong) == confusion.sum() - np.trace(confusion) > 0
  test_files = json.loads((workdir / 'splits.json').read_text())['test']
  assert len({w['image'] for w in wrong}) == len(wrong)
  assert {w['image'] for w in wrong} <= set(test_files)
  names = report['class_names']
  for w in wrong:
    assert w['label'] != w['predicted'] and w['predicted_score'] >= w['label_score']
    assert confusion[names.index(w['label']), names.index(w['predicted'])] > 0


def test_misclassified_lists_each_wrong_image_with_both_scores():
  scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9]])
  wrong = evaluate.misclassified(['a.png', 'b.png', 'c.png', 'd.png'], np.array([0, 1, 1, 0]),
                                 scores, ['x', 'y', 'z'])
  assert wrong == [
      {'image': 'b.png', 'label': 'y', 'predicted': 'z', 'predicted_score': pytest.approx(0.6),
       'label_score': pytest.approx(0.3)},
      {'image': 'd.png', 'label': 'x', 'predicted': 'z', 'predicted_score': pytest.approx(0.9),
       'label_score': pytest.approx(0.0)}]


def test_an_archive_is_read_by_its_class_folders_and_matches_the_dataset_split(reference_run,
                                                                               nhcd_zip_dir):
  """The NHCD archive as a folder of <subset>/<class>/<image>: the numerals run refuses its
  other classes unless told to skip them; then it scores the same 120 images, with the same
  result, as the dataset split `nhcd:numerals/train` read with the dataset's polarity."""
  _, workdir = reference_run
  archive = str(nhcd_zip_dir / 'nhcd.zip')
  with pytest.raises(evaluate.EvaluationError, match=r'classes the run does not have: '
                     r'consonants/1 \(12 images\).*--skip_unknown_classes'):
    evaluate.evaluate(str(workdir), archive)
  folder = evaluate.evaluate(str(workdir), archive, skip_unknown=True)
  assert folder['images'] == 120 and sum(folder['skipped_unknown_classes'].values()) == 48 * 12
  assert folder['class_mapping']['numerals/7'] == '7 (७)'
  split = evaluate.evaluate(str(workdir), 'nhcd:numerals/train')
  assert split['images'] == 120
  assert folder['confusion_matrix'] == split['confusion_matrix']
  assert folder['accuracy'] == split['accuracy'] > 0.1


def test_folders_named_by_glyph_or_latin_label_and_unknown_ones_named(reference_run, tmp_path):
  _, workdir = reference_run
  rng = np.random.default_rng(0)
  for folder, label in (('३', 3), ('5', 5), ('7 (७)', 7)):
    for i in range(2):
      image = conftest.character_image(label, 28, rng, dark_ink=True)
      (tmp_path / 'mine' / folder).mkdir(parents=True, exist_ok=True)
      (tmp_path / 'mine' / folder / f'{i}.png').write_bytes(conftest.encode(image, 'PNG'))
  report = evaluate.evaluate(str(workdir), str(tmp_path / 'mine'))
  assert report['images'] == 6
  assert report['images_per_class'] == {'3 (३)': 2, '5 (५)': 2, '7 (७)': 2}
  assert report['class_mapping'] == {'३': '3 (३)', '5': '5 (५)', '7 (७)': '7 (७)'}
  correct = sum(report['confusion_matrix'][i][i] for i in range(10))
  assert len(report['misclassified']) == 6 - correct
  files = {f'{folder}/{i}.png' for folder in ('३', '5', '7 (७)') for i in range(2)}
  assert {w['image'] for w in report['misclassified']} <= files
  (tmp_path / 'mine' / 'ka').mkdir()
  (tmp_path / 'mine' / 'ka' / '0.png').write_bytes(
      conftest.encode(conftest.character_image(1, 28, rng, dark_ink=True), 'PNG'))
  with pytest.raises(evaluate.EvaluationError, match=r'ka \(1 images\)'):
    evaluate.evaluate(str(workdir), str(tmp_path / 'mine'))


@pytest.mark.slow  # starts the command
def test_command_writes_the_report_and_refuses_unknown_data(reference_run, tmp_path):
  _, workdir = reference_run
  out = tmp_path / 'report.json'
  proc = subprocess.run([sys.executable, '-m', 'charjax.evaluate', f'--workdir={workdir}',
                         'validation', f'--out={out}'], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'validation: accuracy' in proc.stdout and ' wrong' in proc.stdout
  assert 'checkpoint_manager' not in proc.stderr and 'read only' not in proc.stderr
  report = json.loads(out.read_text())
  assert report['images'] == len(json.loads((workdir / 'splits.json').read_text())['validation'])
  proc = subprocess.run([sys.executable, '-m', 'charjax.evaluate', f'--workdir={workdir}',
                         str(tmp_path / 'nowhere')], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 1 and 'is neither a split' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_shifted_moves_by_whole_pixels_and_fills_with_zero():
  x = np.arange(1.0, 17.0).reshape(1, 4, 4, 1)
  out = evaluate.shifted(x, 1, -2)
  expected = np.zeros((4, 4))
  expected[1:, :2] = x[0, :3, 2:, 0]
  np.testing.assert_array_equal(out[0, ..., 0], expected)
  np.testing.assert_array_equal(evaluate.shifted(x, 0, 0), x)


def test_test_time_augmentation_averages_the_views_scores(reference_run):
  from charjax import predict
  from charjax import runs
  from charjax.data import input_pipeline
  _, workdir = reference_run
  classifier = predict.load_classifier(str(workdir), None)
  _, data = input_pipeline.load_splits(runs.load_config(workdir))
  inputs = data.images['validation']
  views = [evaluate.scores_of(classifier, evaluate.shifted(inputs, r, c))
           for r, c in evaluate.TTA_VIEWS['shift1']]
  np.testing.assert_allclose(evaluate.scores_of(classifier, inputs, 'shift1'),
                             np.mean(views, 0), rtol=1e-6)
  report = evaluate.evaluate(str(workdir), 'validation', tta='shift1')
  assert report['tta'] == 'shift1' and len(report['tta_views']) == 5
  assert report['accuracy'] == pytest.approx(
      np.mean(np.argmax(np.mean(views, 0), -1) == data.labels['validation']))
  with pytest.raises(evaluate.EvaluationError, match='not one of'):
    evaluate.evaluate(str(workdir), 'validation', tta='rotate')


def test_the_last_checkpoint_scores_the_runs_final_epoch(reference_run, tmp_path):
  """A run keeps its best and its last epoch. In a copy of the 5-epoch run whose best epoch
  is made epoch 2 (a freshly initialised state saved there), `checkpoint='best'` scores that
  state and `'last'` the final epoch, as its training recorded it on validation."""
  import jax
  from charjax import checkpointing
  from charjax import predict
  from charjax import runs
  from charjax import train
  from charjax.data import input_pipeline
  config, workdir = reference_run
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  names = runs.load_results(run)['class_names']
  fresh = train.create_train_state(config, train.create_model(config, len(names)),
                                   jax.random.key(7), config.image_size)
  with checkpointing.manager(tmp_path / 'other') as other:
    checkpointing.save(other, 2, fresh)
  shutil.move(tmp_path / 'other' / '2', run / 'checkpoints' / '2')
  results = runs.load_results(run)
  results['best_epoch'] = 2
  (run / 'results.json').write_text(json.dumps(results))

  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  last = evaluate.evaluate(str(run), 'validation', checkpoint='last')
  assert last['checkpoint'] == 'last' and last['checkpoint_epochs'] == [config.num_epochs]
  assert last['accuracy'] == pytest.approx(records[-1]['val_accuracy'], abs=1e-6)
  best = evaluate.evaluate(str(run), 'validation')
  assert best['checkpoint'] == 'best' and best['checkpoint_epochs'] == [2]
  _, data = input_pipeline.load_splits(config)
  images = data.images['validation']
  expected = predict.load_classifier(str(run), None).scores(images)
  model = train.create_model(config, len(names))
  np.testing.assert_allclose(expected, jax.nn.softmax(model.apply(
      {'params': fresh.params}, images, train=False)), rtol=1e-5, atol=1e-6)
  assert not np.allclose(expected, predict.load_classifier(str(run), None, 'last').scores(images))
  with pytest.raises(evaluate.EvaluationError, match='not one of best, last'):
    evaluate.evaluate(str(run), 'validation', checkpoint='first')
  with pytest.raises(evaluate.EvaluationError, match='fitted on'):
    evaluate.evaluate(str(run), 'test', svc='svc_numerals.npz', checkpoint='last')


def test_an_ensemble_refuses_runs_of_other_classes_or_splits(reference_run, tmp_path):
  """Runs of other classes cannot be averaged; runs of another split cannot be scored on
  their own splits together (a dataset split is fine)."""
  import shutil
  _, workdir = reference_run
  other = tmp_path / 'other_split'
  shutil.copytree(workdir, other)
  splits = json.loads((other / 'splits.json').read_text())
  splits['test'], splits['validation'] = splits['validation'], splits['test']
  (other / 'splits.json').write_text(json.dumps(splits))
  with pytest.raises(evaluate.EvaluationError, match='another split'):
    evaluate.evaluate([str(workdir), str(other)], 'test')
  same = evaluate.evaluate([str(workdir), str(workdir)], 'test')
  alone = evaluate.evaluate(str(workdir), 'test')
  assert same['accuracy'] == alone['accuracy'] and same['member_accuracies'] == [
      alone['accuracy']] * 2
  with pytest.raises(evaluate.EvaluationError, match='SVC'):
    evaluate.evaluate([str(workdir), str(workdir)], 'test', svc='x.npz')
  renamed = tmp_path / 'other_classes'
  shutil.copytree(workdir, renamed)
  results = json.loads((renamed / 'results.json').read_text())
  results['class_names'] = results['class_names'][::-1]
  (renamed / 'results.json').write_text(json.dumps(results))
  with pytest.raises(evaluate.EvaluationError, match='other classes'):
    evaluate.evaluate([str(workdir), str(renamed)], 'validation')
