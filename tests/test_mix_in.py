"""charjax.data.mix_in: DHCD's images of a run's classes mixed into its training epochs."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax import configuration
from charjax import seeds
from charjax import train
from charjax.data import classes
from charjax.data import input_pipeline
from charjax.data import mix_in
from charjax.data import preprocess
from tests import conftest
from tests.test_train import tiny_config

PER_CLASS = 4  # DHCD Train/ images per class; its Test/ holds one more per class


@pytest.fixture(scope='module')
def both_datasets(nhcd_zip_dir, tmp_path_factory):
  """(data_dir, tfds_dir) holding the miniature NHCD and a miniature DHCD with Test/."""
  data_dir = tmp_path_factory.mktemp('both')
  shutil.copy(nhcd_zip_dir / 'nhcd.zip', data_dir / 'nhcd.zip')
  conftest.write_archive(conftest.dhcd_files(per_class=PER_CLASS, test_per_class=1),
                         data_dir / 'dhcd.zip')
  return data_dir, tmp_path_factory.mktemp('both_tfds')


def _config(both_datasets, subset, **fields):
  config = tiny_config(*both_datasets)
  config.subset, config.mix_in = subset, 'dhcd'
  config.update(fields)
  return config


def test_the_other_datasets_classes_are_matched_by_name_and_labelled_as_the_runs(both_datasets):
  """All 58 NHCD classes: DHCD's 36 consonants and 10 digits join under NHCD's label
  numbers (consonants 22-57, digits 0-9), only from DHCD's training split, the vowels get
  none; the images are DHCD's, preprocessed without inversion (light ink already)."""
  config = _config(both_datasets, 'all')
  names = [c.name for c in classes.NHCD_SUBSETS['all']]
  mixed = mix_in.load(config, names, num_train=30)
  assert mixed.record['images'] == 46 * PER_CLASS == len(mixed.labels)
  assert mixed.record['classes_without'] == [c.name for c in classes.NHCD_SUBSETS['vowels']]
  assert len(mixed.record['classes_matched']) == 46 and mixed.per_epoch == 30
  dhcd = input_pipeline.load_examples('dhcd', data_dir=config.data_dir,
                                      tfds_dir=config.tfds_dir)
  # load_examples and mix_in read the same examples in the same (file-name) order.
  their_names = [dhcd.class_names[k] for k in dhcd.labels]
  assert [names[k] for k in mixed.labels] == their_names
  assert set(mixed.labels[np.array(their_names) == 'ka (क)']) == {22}
  assert set(mixed.labels[np.array(their_names) == '7 (७)']) == {7}
  want = preprocess.to_model_input(dhcd.images, ink_is_dark=False, image_size=16)
  np.testing.assert_array_equal(mixed.images, want)


def test_draws_are_capped_by_what_there_is_and_refused_when_nothing_matches(both_datasets):
  consonants = [c.name for c in classes.NHCD_SUBSETS['consonants']]
  mixed = mix_in.load(_config(both_datasets, 'consonants', mix_in_per_epoch=100.0),
                      consonants, num_train=300)
  assert mixed.per_epoch == 36 * PER_CLASS and mixed.record['classes_without'] == []
  assert mix_in.load(_config(both_datasets, 'consonants', mix_in=''), consonants, 300) is None
  with pytest.raises(configuration.ConfigError, match='none of its classes'):
    mix_in.load(_config(both_datasets, 'vowels'),
                [c.name for c in classes.NHCD_SUBSETS['vowels']], num_train=100)
  with pytest.raises(configuration.ConfigError, match='draws no image'):
    mix_in.load(_config(both_datasets, 'consonants', mix_in_per_epoch=0.001), consonants, 300)


def test_each_epoch_draws_other_images_without_replacement_the_same_on_a_rerun():
  own = jnp.zeros((5, 2, 2, 1))
  extra = jnp.arange(1, 21, dtype=jnp.float32)[:, None, None, None] * jnp.ones((20, 2, 2, 1))
  extra_labels = jnp.arange(100, 120)
  draw = lambda epoch: mix_in.epoch_training_set(own, jnp.zeros(5, jnp.int32), extra,
                                                 extra_labels, jax.random.key(3), epoch,
                                                 per_epoch=8)
  images, labels = draw(1)
  assert images.shape == (13, 2, 2, 1) and labels.shape == (13,)
  np.testing.assert_array_equal(images[:5], 0)
  picked = np.asarray(labels[5:]) - 100
  assert len(set(picked.tolist())) == 8                  # no image twice in an epoch
  np.testing.assert_array_equal(images[5:, 0, 0, 0], picked + 1)  # images follow labels
  np.testing.assert_array_equal(draw(1)[1], labels)      # the same epoch: the same draw
  assert not np.array_equal(draw(2)[1], labels)          # another epoch: another draw


def test_a_run_trains_on_both_and_says_so(both_datasets, tmp_path):
  config = _config(both_datasets, 'numerals', num_epochs=1, mix_in_per_epoch=0.25)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  num_train = results['split_sizes']['train']
  assert results['mix_in']['per_epoch'] == round(0.25 * num_train) < 10 * PER_CLASS
  assert results['mix_in']['images'] == 10 * PER_CLASS
  assert results['mix_in']['dataset'] == 'dhcd'
  # Validation and test are NHCD's own: the same sizes as a run without mix_in.
  _, data = input_pipeline.load_splits(config)
  assert results['split_sizes'] == {k: len(v) for k, v in data.labels.items()}
  record = json.loads((tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()[0])
  assert record['images_per_s'] * record['epoch_seconds'] == pytest.approx(
      num_train + results['mix_in']['per_epoch'])


def test_configs_that_cannot_mix_are_refused(both_datasets, tmp_path):
  for fields, message in (({'mix_in': 'nhcd'}, "the run's own dataset"),
                          ({'mix_in': 'no_such_dataset'}, 'mix_in: dataset'),
                          ({'mix_in_per_epoch': 0.0}, 'must be positive')):
    with pytest.raises(configuration.ConfigError, match=message):
      configuration.validate(_config(both_datasets, 'numerals', **fields))
  config = _config(both_datasets, 'numerals')
  with pytest.raises(configuration.ConfigError, match='--together'):
    seeds.train_together([seeds.seed_config(config, s) for s in (0, 1)],
                         [tmp_path / 'a', tmp_path / 'b'])
