"""charjax.seeds: N seeds of one config, mean ± std of test accuracy, resumable."""

import json
import statistics

import numpy as np
import pytest

from charjax import evaluate
from charjax import predict
from charjax import seeds
from charjax.data import input_pipeline
from tests.test_train import tiny_config


def test_seeds_train_separately_and_report_mean_and_std(prepared_dirs, tmp_path):
  config = tiny_config(*prepared_dirs)
  config.num_epochs = 2
  report = seeds.train_seeds(config, str(tmp_path), num_seeds=2, first_seed=5)
  assert [r['seed'] for r in report['runs']] == [5, 6]
  per_seed = [json.loads((tmp_path / f'seed_{k}' / 'results.json').read_text()) for k in (0, 1)]
  accuracies = [r['test_accuracy'] for r in per_seed]
  assert report['test_accuracy']['mean'] == pytest.approx(statistics.fmean(accuracies))
  assert report['test_accuracy']['std'] == pytest.approx(statistics.stdev(accuracies))
  assert json.loads((tmp_path / 'seeds.json').read_text())['test_accuracy']['n'] == 2
  assert report['per_subset_test_accuracy'] == {}  # numerals: no smaller named subset
  # Different seeds, same split: the runs differ (losses), the test images do not.
  assert per_seed[0]['best_val_loss'] != per_seed[1]['best_val_loss']
  splits = [json.loads((tmp_path / f'seed_{k}' / 'splits.json').read_text()) for k in (0, 1)]
  assert splits[0] == splits[1]
  # The seeds' folder scores as an ensemble: probabilities averaged, each member reported.
  ensemble = evaluate.evaluate(str(tmp_path), 'test')
  assert ensemble['ensemble'] == [str(tmp_path / 'seed_0'), str(tmp_path / 'seed_1')]
  assert ensemble['member_accuracies'] == pytest.approx(accuracies)
  _, data = input_pipeline.load_splits(config)
  probabilities = [predict.load_classifier(str(tmp_path / f'seed_{k}'), None).scores(
      data.images['test']) for k in (0, 1)]
  expected = np.argmax(np.mean(probabilities, 0), -1)
  assert ensemble['accuracy'] == pytest.approx(np.mean(expected == data.labels['test']))
  assert evaluate.evaluate([str(tmp_path / 'seed_1')], 'test')['accuracy'] == pytest.approx(
      accuracies[1])
  # Rerunning resumes: finished seeds are not trained again.
  stamp = (tmp_path / 'seed_0' / 'results.json').stat().st_mtime_ns
  again = seeds.train_seeds(config, str(tmp_path), num_seeds=2, first_seed=5)
  assert (tmp_path / 'seed_0' / 'results.json').stat().st_mtime_ns == stamp
  assert again['test_accuracy'] == report['test_accuracy']
  # Another config in the same folder is refused, naming what differs.
  config.optimizer.learning_rate = 1e-2
  with pytest.raises(Exception, match='optimizer.learning_rate'):
    seeds.train_seeds(config, str(tmp_path), num_seeds=2, first_seed=5)


def test_subset_accuracies_are_summarised_over_seeds_that_all_report_them():
  runs = [{'per_subset_accuracy': {'numerals': 1.0, 'vowels': 0.9}},
          {'per_subset_accuracy': {'numerals': 0.98, 'vowels': 0.95}}]
  summary = seeds.summarise_subsets(runs)
  assert list(summary) == ['numerals', 'vowels']
  assert summary['numerals']['mean'] == pytest.approx(0.99)
  assert summary['vowels']['std'] == pytest.approx(statistics.stdev([0.9, 0.95]))
  # A seed finished by older code (no field) or scored on other subsets: no summary.
  assert seeds.summarise_subsets(runs + [{}]) == {}
  assert seeds.summarise_subsets(runs + [{'per_subset_accuracy': {'numerals': 1.0}}]) == {}


@pytest.mark.parametrize('mix', ['', 'cutmix'])
def test_seeds_trained_together_match_seeds_trained_apart(prepared_dirs, tmp_path, mix):
  """vmapped over the seed in one program, each seed gets the metrics, checkpoints and
  results it gets alone (up to float reordering; the same draws), with images mixed in
  pairs too."""
  config = tiny_config(*prepared_dirs)
  config.num_epochs = 2
  config.augment, config.augment_mix = bool(mix), mix
  apart = seeds.train_seeds(config, str(tmp_path / 'apart'), num_seeds=2)
  together = seeds.train_seeds(config, str(tmp_path / 'together'), num_seeds=2, together=True)
  assert together['together'] and not apart['together']
  for k in (0, 1):
    a = [json.loads(l) for l in (tmp_path / 'apart' / f'seed_{k}' / 'metrics.jsonl').open()]
    t = [json.loads(l) for l in (tmp_path / 'together' / f'seed_{k}' / 'metrics.jsonl').open()]
    assert [r['epoch'] for r in t] == [1, 2]
    for key in ('train_loss', 'val_loss'):
      assert [r[key] for r in t] == pytest.approx([r[key] for r in a], rel=1e-4)
    results = json.loads((tmp_path / 'together' / f'seed_{k}' / 'results.json').read_text())
    assert results['trained_together_with_seeds'] == [0, 1]
    alone = json.loads((tmp_path / 'apart' / f'seed_{k}' / 'results.json').read_text())
    assert results['test_loss'] == pytest.approx(alone['test_loss'], rel=1e-4)
    assert results['best_epoch'] == alone['best_epoch']


def test_seeds_together_on_train_and_validation_keep_their_last_epoch(prepared_dirs, tmp_path):
  config = tiny_config(*prepared_dirs)
  config.num_epochs, config.train_on_validation = 2, True
  seeds.train_seeds(config, str(tmp_path), num_seeds=2, together=True)
  for k in (0, 1):
    results = json.loads((tmp_path / f'seed_{k}' / 'results.json').read_text())
    assert results['best_epoch'] == 2 and results['model_selection'].startswith('the last')
    sizes = results['split_sizes']
    assert sizes['train'] == 120 - sizes['test']  # validation trained on as well
