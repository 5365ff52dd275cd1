"""Checks on the real archives in ../shared/data (skipped when absent; marked slow)."""

import json
import pathlib

import numpy as np
import pytest

from charjax.data import input_pipeline
from tests.conftest import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / 'nhcd.zip').exists(), reason='no ../shared/data'),
]


def test_real_nhcd_counts_and_first_epochs_of_numerals(tmp_path, real_numerals_run):
  examples = input_pipeline.load_examples('nhcd', 'all', data_dir=SHARED_DATA,
                                          tfds_dir=tmp_path / 'tfds')
  assert len(examples.labels) == 12_912
  assert len(set(examples.writer_ids)) >= 30

  workdir, results = real_numerals_run  # numerals, 15 epochs
  assert results['split_sizes'] == {'train': 2017, 'validation': 431, 'test': 432}
  val = [json.loads(l)['val_accuracy'] for l in open(workdir / 'metrics.jsonl')]
  assert max(val) >= 0.90, val
  # predict on the test split's own files scores what the training preprocessing scored
  accuracy = predict_accuracy_on_test_split(workdir, SHARED_DATA / 'nhcd.zip',
                                            tmp_path / 'files')
  assert abs(accuracy - results['test_accuracy']) < 0.002, (accuracy, results['test_accuracy'])


def predict_accuracy_on_test_split(workdir, archive, folder) -> float:
  """Writes the run's test images (as stored in `archive`) to `folder` and classifies them
  with `charjax.predict`; returns the fraction whose top class is the true one."""
  from charjax.data import archives
  from charjax import predict
  from charjax import runs
  config = runs.load_config(workdir)
  names = json.loads((workdir / 'splits.json').read_text())['test']
  examples = input_pipeline.load_examples(config.dataset, config.subset,
                                          data_dir=archive.parent, tfds_dir=config.tfds_dir)
  label_of = {str(n): int(l) for n, l in zip(examples.file_names, examples.labels)}
  data = dict(archives.iter_files(archive, set(names)))
  folder.mkdir(parents=True, exist_ok=True)
  files = []
  for i, name in enumerate(names):
    path = folder / f'{i:05d}{pathlib.PurePosixPath(name).suffix}'
    path.write_bytes(data[name])
    files.append(path)
  classifier = predict.load_classifier(str(workdir), None)
  records = predict.predict(classifier, files, top_k=1)
  right = sum(r['top'][0]['index'] == label_of[n] for r, n in zip(records, names))
  return right / len(names)


@pytest.mark.skipif(not (SHARED_DATA / 'dhcd-train.tar.xz').exists(), reason='no DHCD archive')
def test_real_dhcd_prepares_with_1700_images_per_class(tmp_path):
  examples = input_pipeline.load_examples('dhcd', data_dir=SHARED_DATA,
                                          tfds_dir=tmp_path / 'tfds')
  assert len(examples.class_names) == 46
  assert np.bincount(examples.labels).tolist() == [1700] * 46
  assert examples.images[0].shape == (32, 32, 1)
