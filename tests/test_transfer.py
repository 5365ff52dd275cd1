"""charjax.transfer: a run started from another run's parameters (fine-tuning)."""

import json

import jax
import numpy as np
import pytest

from charjax import runs
from charjax import train
from charjax import transfer
from tests.test_train import tiny_config


def test_transfer_copies_matching_layers_but_not_the_output_layer():
  params = {'Conv_0': {'kernel': np.zeros((3, 3, 1, 4))}, 'Dense_0': {'kernel': np.zeros((8, 5))},
            'Dense_1': {'kernel': np.zeros((5, 10))}}
  pretrained = {'Conv_0': {'kernel': np.ones((3, 3, 1, 4))}, 'Dense_0': {'kernel': np.ones((9, 5))},
                'Dense_1': {'kernel': np.ones((5, 10))}}
  out, record = transfer.transfer(params, pretrained)
  assert float(out['Conv_0']['kernel'].sum()) == 36          # copied
  assert float(out['Dense_0']['kernel'].sum()) == 0          # another shape: kept fresh
  assert float(out['Dense_1']['kernel'].sum()) == 0          # the output layer: kept fresh
  assert record == {'copied': ['Conv_0/kernel'],
                    'initialised_fresh': ['Dense_0/kernel', 'Dense_1/kernel']}
  with pytest.raises(ValueError, match='no parameter of the pretrained run fits'):
    transfer.transfer(params, {'Other': {'kernel': np.ones(2)}})


def test_a_run_fine_tuned_from_another_starts_from_its_features(reference_run, tmp_path):
  """A vowels run (12 classes) initialised from the numerals reference run (10): its
  convolutions start as the reference's best checkpoint, its output layer fresh, and its
  results name the run it came from."""
  _, source = reference_run
  config = tiny_config(reference_run[0].data_dir, reference_run[0].tfds_dir)
  config.subset, config.num_epochs, config.init_from = 'vowels', 1, str(source)
  _, _, pretrained_state, _ = runs.restore_best(str(source))
  model = train.create_model(config, 12)
  state, record = train.initial_state(config, model, jax.random.key(0), 1)
  flat = lambda tree: {jax.tree_util.keystr(p): l
                       for p, l in jax.tree_util.tree_leaves_with_path(tree)}
  got, want = flat(state.params), flat(pretrained_state.params)
  conv_keys = [k for k in got if 'Conv' in k]
  assert conv_keys and all(np.array_equal(got[k], want[k]) for k in conv_keys)
  last = list(state.params)[-1]
  assert all(name.startswith(last) for name in record['initialised_fresh'])
  assert record['workdir'] == str(source.resolve()) and record['subset'] == 'numerals'
  results = train.train_and_evaluate(config, str(tmp_path / 'finetuned'))
  assert results['initialised_from']['workdir'] == str(source.resolve())
  assert json.loads((tmp_path / 'finetuned' / 'config.json').read_text())['init_from'] == str(source)


def test_resnet_transfer_keeps_every_layer_but_the_classifier():
  import jax
  import jax.numpy as jnp
  from charjax import transfer
  from charjax.nn import models
  init = lambda n, seed: models.create({'name': 'ResNet', 'stage_features': (16, 32)},
                                       num_classes=n).init(
      jax.random.key(seed), jnp.zeros((1, 16, 16, 1)), train=False)['params']
  pretrained, fresh = init(46, 0), init(36, 1)
  out, record = transfer.transfer(fresh, pretrained)
  assert sorted(record['initialised_fresh']) == ['Dense_0/bias', 'Dense_0/kernel']
  assert 'stem/Conv2D_0/kernel' in record['copied'] and len(record['copied']) == sum(
      1 for k in record['copied'] if not k.startswith('Dense_0'))
  np.testing.assert_array_equal(out['stem_norm']['scale'], pretrained['stem_norm']['scale'])
