"""Experiment 1: PCA + RBF SVC on flattened images (scikit-learn).

PCA is fitted on the training part only; the SVC is grid-searched with stratified k-fold
cross-validation. Two protocols, one run:

- 'cnn_split': training part = train + validation of the CNN experiments' split, test = its
  test set, so the numbers compare with experiment 2's on the same test images;
- 'study_75_25': the study's own `train_test_split` 75/25 (seeded here; the study fixed none).

  python -m charjax.study.baseline --config charjax/configs/pca_svc.py --config.subset=vowels \
      --workdir runs/pca_svc/vowels

Writes `config.json`, `results.json` (test accuracy and best parameters per protocol) and
`pca.npz` (mean, components, explained variance; arrays only) for the report's figures.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np
from sklearn import decomposition
from sklearn import model_selection

from charjax.data import archives
from charjax import cli
from charjax.data import input_pipeline
from charjax.data import preprocess
from charjax.data import registry
from charjax.study import svc
from charjax.data import sources

FIELDS = ('dataset', 'subset', 'data_dir', 'tfds_dir', 'image_size', 'split', 'test_fraction',
          'val_fraction', 'split_seed', 'pca_components', 'pca_saved_components', 'svc_C',
          'svc_gamma', 'cv_folds', 'study_test_fraction', 'seed')


class BaselineConfigError(ValueError):
  """A baseline config lacks fields or has unknown ones."""


def _check(config) -> None:
  unknown, missing = set(config.keys()) - set(FIELDS), set(FIELDS) - set(config.keys())
  if unknown or missing:
    raise BaselineConfigError(f'Invalid baseline config: unknown fields {sorted(unknown)}, '
                              f'missing fields {sorted(missing)}.')
  if not 0 < config.pca_components <= config.pca_saved_components:
    raise BaselineConfigError('pca_components must be positive and at most '
                              'pca_saved_components.')


def fit_and_score(train_x, train_y, test_x, test_y, config) -> tuple[dict, decomposition.PCA]:
  """PCA on `train_x` only, grid-searched SVC on its projection; test accuracy and params."""
  pca = decomposition.PCA(n_components=min(config.pca_saved_components, *train_x.shape),
                          svd_solver='full').fit(train_x)
  k = config.pca_components
  project = lambda x: (x - pca.mean_) @ pca.components_[:k].T
  search = svc.grid_search(project(train_x), train_y, C=config.svc_C, gamma=config.svc_gamma,
                           folds=config.cv_folds, seed=config.seed)
  accuracy = float(np.mean(search.best_estimator.predict(project(test_x)) == test_y))
  return {'test_accuracy': accuracy, 'best_params': search.best_params,
          'cv_accuracy': float(search.best_score),
          'cv_accuracy_grid': search.mean_scores.tolist(), 'train_size': int(len(train_y)),
          'test_size': int(len(test_y)),
          'explained_variance': float(pca.explained_variance_ratio_[:k].sum())}, pca


def run(config: ml_collections.ConfigDict, workdir) -> dict:
  """Runs both protocols on `config.dataset`/`config.subset`; returns `results.json`'s dict."""
  _check(config)
  start = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  examples = input_pipeline.load_examples(config.dataset, config.subset,
                                          data_dir=config.data_dir or None,
                                          tfds_dir=config.tfds_dir or None)
  x = preprocess.to_model_input(examples.images,
                                ink_is_dark=registry.get(config.dataset).ink_is_dark,
                                image_size=config.image_size).reshape(len(examples.labels), -1)
  y = examples.labels
  cnn = input_pipeline.make_splits(examples, kind=config.split,
                                   test_fraction=config.test_fraction,
                                   val_fraction=config.val_fraction, seed=config.split_seed)
  train = np.concatenate([cnn['train'], cnn['validation']])
  results = {'dataset': config.dataset, 'subset': config.subset,
             'class_names': examples.class_names}
  results['cnn_split'], pca = fit_and_score(x[train], y[train], x[cnn['test']],
                                            y[cnn['test']], config)
  logging.info('%s: PCA+SVC on the CNN split: %.4f %s', config.subset,
               results['cnn_split']['test_accuracy'], results['cnn_split']['best_params'])
  tr, te = model_selection.train_test_split(np.arange(len(y)),
                                            test_size=config.study_test_fraction,
                                            random_state=config.seed)
  results['study_75_25'], _ = fit_and_score(x[tr], y[tr], x[te], y[te], config)
  logging.info('%s: PCA+SVC on a 75/25 split: %.4f %s', config.subset,
               results['study_75_25']['test_accuracy'], results['study_75_25']['best_params'])
  np.savez(workdir / 'pca.npz', mean=pca.mean_, components=pca.components_,
           explained_variance_ratio=pca.explained_variance_ratio_,
           image_shape=np.array([config.image_size, config.image_size]))
  results['test_accuracy'] = results['cnn_split']['test_accuracy']
  results['wall_clock_s'] = time.time() - start
  (workdir / 'results.json').write_text(json.dumps(results, indent=2, ensure_ascii=False))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    run(flags.FLAGS.config, flags.FLAGS.workdir)
  except (BaselineConfigError, sources.DataNotFoundError, archives.ArchiveError) as e:
    sys.exit(f'charjax: {e}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Baseline config (charjax/configs/pca_svc.py).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for the results.')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
