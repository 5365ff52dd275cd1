"""Experiment 3's specialisation: RBF SVCs per subset on the 58-class network's features.

The trained network without its last dense layer maps each image to 512 features (after
the second dense layer's ReLU), computed in batched jitted calls. For each subset, an RBF
SVC is grid-searched with stratified k-fold cross-validation on the subset's train +
validation features and scored on its test images (the 58-class split cut back into the
subsets, so no test image was seen in training). Classifiers are saved as `.npz` arrays
(see `charjax.study.svc`), never pickled.

  python -m charjax.study.specialise --cnn_workdir runs/all_classes --workdir runs/all_classes/svc

Any network on NHCD's 58 classes whose module returns features with `features=True` works
the same way, e.g. the ResNet of `recipe_from_dhcd --config.subset=all` (its pooled
features).
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from charjax import cli
from charjax.nn import conv
from charjax.data import input_pipeline
from charjax import runs
from charjax.study import svc
from charjax import train
from charjax.data import classes

STUDY_C = (1.0, 10.0, 100.0, 1000.0)
STUDY_GAMMA = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@functools.partial(jax.jit, static_argnums=0)
def _features(model, params, images):
  return model.apply({'params': params}, images, train=False,
                     features=True).astype(jnp.float32)


def extract_features(model, params, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """The model's feature vectors (`features=True`) for `images`, in jitted batches."""
  out = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    pad = batch_size - len(batch) if len(images) > batch_size else 0
    feats = _features(model, params, jnp.pad(batch, ((0, pad), (0, 0), (0, 0), (0, 0))))
    out.append(np.asarray(feats)[:len(batch)])
  return np.concatenate(out)


def subset_ranges() -> dict[str, tuple[int, int]]:
  """Label range [start, stop) of each NHCD subset inside the 58-class labels."""
  ranges, start = {}, 0
  for name in ('numerals', 'vowels', 'consonants'):
    ranges[name] = (start, start + len(classes.NHCD_SUBSETS[name]))
    start = ranges[name][1]
  return ranges


def subset_features(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray]):
  """{subset: (x, y, test_x, test_y)}: train + validation and test features of each subset
  cut out of the 58-class split, with labels counted from the subset's first class."""
  out = {}
  for name, (lo, hi) in subset_ranges().items():
    pick = {s: (labels[s] >= lo) & (labels[s] < hi) for s in labels}
    x = np.concatenate([feats['train'][pick['train']], feats['validation'][pick['validation']]])
    y = np.concatenate([labels['train'][pick['train']],
                        labels['validation'][pick['validation']]]) - lo
    out[name] = (x, y, feats['test'][pick['test']], labels['test'][pick['test']] - lo)
  return out


def run(cnn_workdir, workdir, *, C=STUDY_C, gamma=STUDY_GAMMA, folds: int = 5,
        seed: int = 0) -> dict:
  """Fits and scores one SVC per subset on the features of the run in `cnn_workdir`."""
  start = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config, model, state, class_names = runs.restore_best(cnn_workdir)
  if config.dataset != 'nhcd' or config.subset != 'all':
    raise runs.RunError(f'{cnn_workdir} was trained on {config.dataset}/{config.subset}; the '
                        'SVCs need a network on all 58 NHCD classes (e.g. '
                        'charjax/configs/all_classes.py).')
  _, data = input_pipeline.load_splits(config)
  feats = {name: extract_features(model, state.params, images)
           for name, images in data.images.items()}
  test_sums = train.evaluate(state, data.images['test'], data.labels['test'],
                             batch_size=min(config.eval_batch_size, len(data.labels['test'])),
                             unroll=conv.loop_unroll(config.conv_impl,
                                                    dtype=config.dtype))
  cnn_test_predictions = np.asarray(test_sums['predictions'])
  results = {'cnn_workdir': str(cnn_workdir), 'feature_dim': int(feats['test'].shape[1]),
             'grid': {'C': list(C), 'gamma': list(gamma)}, 'folds': folds, 'subsets': {}}
  ranges = subset_ranges()
  for name, (x, y, test_x, test_y) in subset_features(feats, data.labels).items():
    lo, hi = ranges[name]
    pick_test = (data.labels['test'] >= lo) & (data.labels['test'] < hi)
    search = svc.grid_search(x, y, C=C, gamma=gamma, folds=folds, seed=seed)
    arrays = svc.export(search.best_estimator)
    accuracy = float(np.mean(svc.predict(arrays, test_x) == test_y))
    cnn_accuracy = float(np.mean(cnn_test_predictions[pick_test] - lo == test_y))
    svc.save(workdir / f'svc_{name}.npz', arrays, {
        'subset': name, 'label_offset': lo, 'class_names': class_names[lo:hi],
        'best_params': search.best_params, 'cnn_workdir': str(cnn_workdir)})
    results['subsets'][name] = {
        'test_accuracy': accuracy, 'best_params': search.best_params,
        'cv_accuracy': float(search.best_score),
        'cv_accuracy_grid': search.mean_scores.tolist(), 'train_size': int(len(y)),
        'test_size': int(len(test_y)), 'cnn_test_accuracy': cnn_accuracy}
    logging.info('%s: SVC on CNN features %.4f (CNN alone %.4f) %s', name, accuracy,
                 cnn_accuracy, search.best_params)
  results['wall_clock_s'] = time.time() - start
  (workdir / 'results.json').write_text(json.dumps(results, indent=2))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    run(flags.FLAGS.cnn_workdir, flags.FLAGS.workdir, folds=flags.FLAGS.folds)
  except runs.RunError as e:
    sys.exit(f'charjax: {e}')


if __name__ == '__main__':
  flags.DEFINE_string('cnn_workdir', None, 'A finished run on all 58 NHCD classes.')
  flags.DEFINE_string('workdir', None, 'Where the SVCs and results.json go.')
  flags.DEFINE_integer('folds', 5, 'Cross-validation folds of the grid search.')
  flags.mark_flags_as_required(['cnn_workdir', 'workdir'])
  cli.run(main)
