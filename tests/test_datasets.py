"""The TFDS builders on generated archives: layouts, counts, and every kind of bad input."""

import collections
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from charjax.data import archives
from charjax import configs
from charjax import configuration
from charjax.data import input_pipeline
from charjax.data import sources
from tests import conftest


def test_nhcd_from_zip_has_images_labels_writers(prepared_dirs):
  data_dir, tfds_dir = prepared_dirs
  examples = input_pipeline.load_examples('nhcd', 'numerals', data_dir=data_dir,
                                          tfds_dir=tfds_dir)
  assert len(examples.labels) == 10 * 3 * 4
  assert examples.images[0].shape == (28, 28, 1) and examples.images[0].dtype == np.uint8
  assert examples.class_names[3] == '3 (३)'
  assert collections.Counter(examples.labels.tolist()) == {k: 12 for k in range(10)}
  assert set(examples.writer_ids) == {'001', '002', '003'}
  assert examples.file_names[0] == 'nhcd/numerals/0/001_01.jpg'
  # The stored image is the archive's JPEG, decoded: dark ink on a light background.
  assert examples.images[0].mean() > 128


def test_prepared_dataset_is_reused(prepared_dirs, monkeypatch):
  data_dir, tfds_dir = prepared_dirs
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      lambda *a, **k: pytest.fail('re-prepared'))
  assert input_pipeline.prepare('nhcd', 'numerals', tfds_dir=tfds_dir).is_prepared()


@pytest.mark.parametrize('layout', ['nhcd.tar.xz', 'nhcd/labels.csv'])
def test_nhcd_all_from_tar_and_folder_in_study_order(tmp_path, layout):
  conftest.write_archive(conftest.nhcd_files(writers=1, samples=1), tmp_path / 'data' / layout)
  examples = input_pipeline.load_examples('nhcd', 'all', data_dir=tmp_path / 'data',
                                          tfds_dir=tmp_path / 'tfds')
  assert len(examples.class_names) == 58
  by_name = dict(zip(examples.file_names, examples.labels))
  assert by_name['nhcd/numerals/9/001_01.jpg'] == 9
  assert by_name['nhcd/vowels/1/001_01.jpg'] == 10
  assert by_name['nhcd/consonants/36/001_01.jpg'] == 57
  assert examples.class_names[57] == 'gya (ज्ञ)'


@pytest.mark.parametrize('suffix', [False, True])
def test_dhcd_train_only_archive(tmp_path, suffix):
  conftest.write_archive(conftest.dhcd_files(per_class=2, suffix=suffix),
                         tmp_path / 'data' / 'dhcd-train.tar.xz')
  examples = input_pipeline.load_examples('dhcd', data_dir=tmp_path / 'data',
                                          tfds_dir=tmp_path / 'tfds')
  assert len(examples.labels) == 46 * 2 and len(examples.class_names) == 46
  assert examples.images[0].shape == (32, 32, 1)
  assert collections.Counter(examples.labels.tolist()) == {k: 2 for k in range(46)}


def _dhcd_config(tmp_path, **fields):
  config = configs.get('dhcd')
  config.data_dir, config.tfds_dir = str(tmp_path / 'data'), str(tmp_path / 'tfds')
  config.update(fields)
  return config


def test_dhcd_with_a_test_folder_is_tested_on_it_and_validated_on_a_carve_of_train(tmp_path):
  """UCI's archive has Train/ and Test/: 'auto' tests on Test/ exactly, carves validation
  from Train/ (stratified), and says so; 'carved' ignores Test/ and holds out of Train/."""
  conftest.write_archive(conftest.dhcd_files(per_class=14, test_per_class=2),
                         tmp_path / 'data' / 'DevanagariHandwrittenCharacterDataset.zip')
  examples, data = input_pipeline.load_splits(_dhcd_config(tmp_path))
  assert data.test_protocol == 'official'
  assert 'official test split (92 images)' in data.test_protocol_detail
  names = {k: set(examples.file_names[i]) for k, i in data.indices.items()}
  assert names['test'] == {f for f in examples.file_names if '/Test/' in f}
  assert len(names['test']) == 46 * 2
  assert all('/Train/' in f for f in names['train'] | names['validation'])
  assert len(names['train']) + len(names['validation']) == 46 * 14
  assert not names['train'] & names['validation']
  # Stratified: every class is in validation.
  assert set(data.labels['validation'].tolist()) == set(range(46))

  examples, data = input_pipeline.load_splits(_dhcd_config(tmp_path, test_split='carved'))
  assert data.test_protocol == 'carved' and len(examples.labels) == 46 * 14
  assert all('/Train/' in f for f in examples.file_names)


def test_dhcd_train_only_archive_carves_its_test_split_and_refuses_official(tmp_path):
  conftest.write_archive(conftest.dhcd_files(per_class=14), tmp_path / 'data' / 'dhcd-train.tar.xz')
  _, data = input_pipeline.load_splits(_dhcd_config(tmp_path))
  assert data.test_protocol == 'carved'
  assert 'have no official test split' in data.test_protocol_detail
  assert sum(len(y) for y in data.labels.values()) == 46 * 14
  with pytest.raises(configuration.ConfigError, match="test_split='official' but the dhcd data"):
    input_pipeline.load_splits(_dhcd_config(tmp_path, test_split='official'))


def test_missing_data_says_where_to_download_and_put_it(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(sources.DataNotFoundError, match='kaggle.com.*put the archive') as err:
    input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'empty',
                           tfds_dir=tmp_path / 'tfds')
  assert str(tmp_path / 'empty') in str(err.value)


def test_data_dir_from_environment(tmp_path, monkeypatch):
  conftest.write_archive(conftest.nhcd_files(writers=1, samples=1), tmp_path / 'env' / 'nhcd.zip')
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / 'env'))
  assert sources.find_source('nhcd') == tmp_path / 'env' / 'nhcd.zip'


def test_corrupt_image_is_named(tmp_path):
  files = conftest.nhcd_files(writers=1, samples=1)
  files['nhcd/numerals/4/001_01.jpg'] = b'\xff\xd8 not really a jpeg'
  conftest.write_archive(files, tmp_path / 'data' / 'nhcd.zip')
  with pytest.raises(Exception, match='Cannot decode image nhcd/numerals/4/001_01.jpg'):
    input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'data',
                           tfds_dir=tmp_path / 'tfds')


@pytest.mark.parametrize('name', ['nhcd.zip', 'nhcd.tar.xz'])
def test_truncated_archive_is_reported(tmp_path, name):
  path = conftest.write_archive(conftest.nhcd_files(writers=1, samples=1), tmp_path / 'full' / name)
  data = path.read_bytes()
  (tmp_path / 'data').mkdir()
  (tmp_path / 'data' / name).write_bytes(data[:len(data) // 2])
  with pytest.raises(archives.ArchiveError, match='truncated or corrupt'):
    input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'data',
                           tfds_dir=tmp_path / 'tfds')


def test_unexpected_layout_is_reported(tmp_path):
  files = {k.replace('nhcd/numerals/', 'nhcd/digits/'): v
           for k, v in conftest.nhcd_files(writers=1, samples=1).items()}
  conftest.write_archive(files, tmp_path / 'data' / 'nhcd.zip')
  with pytest.raises(archives.ArchiveError, match='no "numerals/" folder'):
    input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'data',
                           tfds_dir=tmp_path / 'tfds')


def test_unknown_class_folder_is_reported(tmp_path):
  files = conftest.nhcd_files(writers=1, samples=1)
  files['nhcd/numerals/10/001_01.jpg'] = files['nhcd/numerals/0/001_01.jpg']
  conftest.write_archive(files, tmp_path / 'data' / 'nhcd.zip')
  with pytest.raises(archives.ArchiveError, match='nhcd/numerals/10/001_01.jpg'):
    input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'data',
                           tfds_dir=tmp_path / 'tfds')


def test_mismatched_labels_csv_is_reported(tmp_path):
  files = conftest.nhcd_files(writers=1, samples=1)
  files['nhcd/labels.csv'] = files['nhcd/labels.csv'].replace('ka,क'.encode(), 'kx,क'.encode())
  conftest.write_archive(files, tmp_path / 'data' / 'nhcd.zip')
  with pytest.raises(archives.ArchiveError, match='labels.csv does not match'):
    input_pipeline.prepare('nhcd', 'consonants', data_dir=tmp_path / 'data',
                           tfds_dir=tmp_path / 'tfds')


def test_prepared_counts_are_checked_against_the_archive(tmp_path, monkeypatch):
  conftest.write_archive(conftest.nhcd_files(writers=1, samples=2), tmp_path / 'data' / 'nhcd.zip')
  real = input_pipeline._expected_counts
  monkeypatch.setattr(input_pipeline, '_expected_counts',
                      lambda *a: real(*a) + collections.Counter({0: 1}))
  with pytest.raises(archives.ArchiveError, match=r"does not match.*'0 \(०\)': \(2, 3\)"):
    input_pipeline.prepare('nhcd', 'numerals', data_dir=tmp_path / 'data',
                           tfds_dir=tmp_path / 'tfds')
  assert not input_pipeline.builder_for('nhcd', 'numerals', tmp_path / 'tfds').is_prepared()


def test_reuse_warns_when_the_archive_changed(tmp_path, caplog):
  conftest.write_archive(conftest.nhcd_files(writers=1, samples=1), tmp_path / 'data' / 'nhcd.zip')
  kwargs = dict(data_dir=tmp_path / 'data', tfds_dir=tmp_path / 'tfds')
  builder = input_pipeline.prepare('nhcd', 'numerals', **kwargs)
  record = json.loads((builder.data_path / input_pipeline.SOURCE_RECORD).read_text())
  assert record['examples_per_class']['7 (७)'] == 1
  conftest.write_archive(conftest.nhcd_files(writers=2, samples=1), tmp_path / 'data' / 'nhcd.zip')
  with caplog.at_level('WARNING'):
    input_pipeline.prepare('nhcd', 'numerals', **kwargs)
  assert 'prepare it again' in caplog.text


def test_preprocessing_inverts_scales_and_resizes():
  from charjax.data import preprocess
  image = np.full((28, 28, 1), 255, np.uint8)
  image[10:18, 10:18] = 0
  out = preprocess.to_model_input([image], ink_is_dark=True, image_size=36)
  assert out.shape == (1, 36, 36, 1) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  assert out[0, 18, 18, 0] == pytest.approx(1.0) and out[0, 0, 0, 0] == pytest.approx(0.0)
  same = preprocess.to_model_input([image], ink_is_dark=False, image_size=28)
  np.testing.assert_allclose(same[0], image / 255.0)
