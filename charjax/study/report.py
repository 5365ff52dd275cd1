"""The study's report: results table beside the study's numbers, and its figures.

  python -m charjax.study.report --study_dir runs/study

Reads the runs written by `python -m charjax.study` (any missing run is reported as
missing) and writes `report.md` and PNG figures under `figures/`: learning curves,
confusion matrices, PCA components and reconstructions of numerals, augmented samples and
the 2-D feature map.
"""

from __future__ import annotations

import functools
import json
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax
import matplotlib
matplotlib.use('Agg')
from matplotlib import font_manager  # pylint: disable=g-import-not-at-top
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from charjax.data import augment
from charjax import cli
from charjax.data import input_pipeline
from charjax.data import preprocess
from charjax.data import registry
from charjax import runs
from charjax.study import specialise

SUBSETS = ('numerals', 'vowels', 'consonants')
# The study's table: (SVC over CNN features, CNN from scratch, PCA + SVC), test accuracy %.
STUDY = {'numerals': (99.7, 97.9, 96.9), 'vowels': (99.5, 93.5, 87.9),
         'consonants': (94.9, 85.9, 75.0)}
COLUMNS = ('SVC over CNN features (exp. 3)', 'CNN from scratch (exp. 2)', 'PCA + SVC (exp. 1)')
TRAINING_RUNS = [f'exp2/{s}' for s in SUBSETS] + ['exp3/cnn', 'exp3/feature_map']


def _read(path: pathlib.Path):
  return json.loads(path.read_text()) if path.exists() else None


def _read_metrics(run_dir: pathlib.Path) -> list[dict] | None:
  path = run_dir / 'metrics.jsonl'
  if not path.exists():
    return None
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _column_results(study_dir: pathlib.Path) -> dict[str, list[dict | None]]:
  """Per subset, the results behind each of `COLUMNS` (None where the run is missing)."""
  svc = _read(study_dir / 'exp3/svc/results.json')
  return {subset: [svc['subsets'][subset] if svc else None,
                   _read(study_dir / f'exp2/{subset}/results.json'),
                   _read(study_dir / f'exp1/{subset}/results.json')] for subset in SUBSETS}


def measured(study_dir: pathlib.Path, columns: dict | None = None
             ) -> dict[str, list[float | None]]:
  """Test accuracy % per subset, in `COLUMNS` order (None where the run is missing).
  `columns`: `_column_results(study_dir)`, if already read."""
  columns = columns or _column_results(study_dir)
  return {subset: [100 * r['test_accuracy'] if r else None for r in results]
          for subset, results in columns.items()}


def _cell(value, study):
  if value is None:
    return f'not run (study {study:.1f})'
  return f'**{value:.1f}** (study {study:.1f}, {value - study:+.1f})'


STEPS = [f'exp1/{s}' for s in SUBSETS] + TRAINING_RUNS[:4] + ['exp3/svc'] + TRAINING_RUNS[4:]


def step_times(study_dir: pathlib.Path) -> list[dict]:
  """Per finished step: `wall_clock_s` of the process that finished it and, for networks,
  the summed epoch times of `metrics.jsonl` (every process's epochs, if the run was resumed)
  and the epoch it resumed from (None where its results predate that field)."""
  rows = []
  for step in STEPS:
    results = _read(study_dir / step / 'results.json')
    if not results:
      continue
    row = {'step': step, 'wall_clock_s': results['wall_clock_s'],
           'epoch_seconds': None, 'resumed_from_epoch': results.get('resumed_from_epoch')}
    metrics = _read_metrics(study_dir / step)
    if metrics is not None:
      row['epoch_seconds'] = sum(r['epoch_seconds'] for r in metrics)
    rows.append(row)
  return rows


def step_times_markdown(study_dir: pathlib.Path) -> str:
  """`step_times` as a table, with totals."""
  rows = step_times(study_dir)
  out = ['| step | wall-clock of its last process (s) | training epochs, all processes (s) '
         '| resumed from epoch |', '|---|---:|---:|---:|']
  for r in rows:
    resumed = '' if r['resumed_from_epoch'] is None else str(r['resumed_from_epoch'])
    epochs = '' if r['epoch_seconds'] is None else f'{r["epoch_seconds"]:.0f}'
    out.append(f'| {r["step"]} | {r["wall_clock_s"]:.0f} | {epochs} | {resumed} |')
  total = sum(r['wall_clock_s'] for r in rows)
  out.append(f'| all | {total:.0f} | '
             f'{sum(r["epoch_seconds"] or 0 for r in rows):.0f} | |')
  return '\n'.join(out)


def test_sizes(study_dir: pathlib.Path, columns: dict | None = None
               ) -> dict[str, list[int | None]]:
  """Test images per subset, in `COLUMNS` order (None where the run is missing).
  `columns`: `_column_results(study_dir)`, if already read."""
  sizes = {}
  for subset, (svc, exp2, exp1) in (columns or _column_results(study_dir)).items():
    sizes[subset] = [svc['test_size'] if svc else None,
                     exp2['split_sizes']['test'] if exp2 else None,
                     exp1['cnn_split']['test_size'] if exp1 else None]
  return sizes


def table_markdown(study_dir: pathlib.Path) -> str:
  """The study's results table with charjax's figures, the study's and the difference,
  then a row of test-set sizes."""
  columns = _column_results(study_dir)
  rows = ['| subset | ' + ' | '.join(COLUMNS) + ' |', '|---|---:|---:|---:|']
  for subset, values in measured(study_dir, columns).items():
    rows.append(f'| {subset} | ' + ' | '.join(
        _cell(v, s) for v, s in zip(values, STUDY[subset])) + ' |')
  sizes = test_sizes(study_dir, columns)
  rows.append('| test images | ' + ' | '.join(
      ' / '.join('-' if sizes[s][i] is None else str(sizes[s][i]) for s in SUBSETS)
      for i in range(len(COLUMNS))) + ' |')
  return '\n'.join(rows)


def _devanagari_font() -> str | None:
  """Registers a Devanagari font with matplotlib and returns its name (None if none found):
  Noto Sans Devanagari from the `fontpkg-noto-sans-devanagari` dependency, else a system font."""
  try:
    import fontpkg_noto_sans_devanagari as noto
    bundled = sorted(str(p) for p in (noto.ROOT / 'files').glob('*.ttf'))
  except ImportError:
    bundled = []
  for path in bundled + font_manager.findSystemFonts():
    name = pathlib.Path(path).name.lower()
    if any(k in name for k in ('devanagari', 'lohit', 'mangal', 'gargi', 'kalimati')):
      font_manager.fontManager.addfont(path)
      return font_manager.FontProperties(fname=path).get_name()
  return None


def _labels(names: list[str], font: str | None) -> list[str]:
  """'ka (क)' with a Devanagari font, else the Latin part alone."""
  return names if font else [n.split(' (')[0] for n in names]


def learning_curves(run_dir: pathlib.Path, out: pathlib.Path) -> bool:
  """Loss and accuracy per epoch (train and validation) of one training run."""
  rows = _read_metrics(run_dir)
  if rows is None:
    return False
  epochs = [r['epoch'] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for ax, key in zip(axes, ('loss', 'accuracy')):
    ax.plot(epochs, [r[f'train_{key}'] for r in rows], label='train')
    ax.plot(epochs, [r[f'val_{key}'] for r in rows], label='validation')
    ax.set_xlabel('epoch')
    ax.set_ylabel(key)
    ax.legend()
  fig.suptitle(str(run_dir.name))
  fig.tight_layout()
  fig.savefig(out, dpi=80)
  plt.close(fig)
  return True


def confusion(run_dir: pathlib.Path, out: pathlib.Path, font: str | None) -> bool:
  """The test confusion matrix of a run, labelled with its class names."""
  results = _read(run_dir / 'results.json')
  if not results:
    return False
  matrix = np.asarray(results['confusion_matrix'])
  names = _labels(results['class_names'], font)
  size = max(4.0, 0.22 * len(names) + 1.5)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(matrix, cmap='Blues')
  ticks = np.arange(len(names))
  ax.set_xticks(ticks, names, rotation=90, fontsize=7, family=font or 'sans-serif')
  ax.set_yticks(ticks, names, fontsize=7, family=font or 'sans-serif')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(f'{run_dir.name}: test accuracy {results["test_accuracy"]:.3f}')
  fig.tight_layout()
  fig.savefig(out, dpi=80)
  plt.close(fig)
  return True


def pca_figures(run_dir: pathlib.Path, components_out: pathlib.Path,
                reconstructions_out: pathlib.Path) -> bool:
  """The leading PCA components as images, and numerals rebuilt from 1/4/8/24/48 of them."""
  path = run_dir / 'pca.npz'
  if not path.exists():
    return False
  with np.load(path, allow_pickle=False) as pca:
    mean, comps, shape = pca['mean'], pca['components'], tuple(pca['image_shape'])
  fig, axes = plt.subplots(2, 6, figsize=(9, 3.2))
  for i, ax in enumerate(axes.flat):
    ax.imshow(comps[i].reshape(shape), cmap='RdBu', interpolation='nearest')
    ax.set_title(f'PC {i + 1}', fontsize=8)
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(components_out, dpi=80)
  plt.close(fig)
  config = ml_collections.ConfigDict(json.loads((run_dir / 'config.json').read_text()))
  examples = input_pipeline.load_examples(config.dataset, config.subset,
                                          data_dir=config.data_dir or None,
                                          tfds_dir=config.tfds_dir or None)
  first = [int(np.argmax(examples.labels == k)) for k in range(min(5, len(set(examples.labels))))]
  images = preprocess.to_model_input([examples.images[i] for i in first],
                                     ink_is_dark=registry.get(config.dataset).ink_is_dark,
                                     image_size=shape[0])
  x = images.reshape(len(first), -1)
  counts = [k for k in (1, 4, 8, 24, 48) if k <= len(comps)]
  fig, axes = plt.subplots(len(first), len(counts) + 1, figsize=(1.4 * (len(counts) + 1),
                                                                 1.4 * len(first)))
  axes = np.atleast_2d(axes)
  for r, row in enumerate(x):
    axes[r, 0].imshow(row.reshape(shape), cmap='gray', interpolation='nearest')
    for c, k in enumerate(counts, 1):
      rebuilt = mean + ((row - mean) @ comps[:k].T) @ comps[:k]
      axes[r, c].imshow(rebuilt.reshape(shape), cmap='gray', interpolation='nearest')
      if r == 0:
        axes[r, c].set_title(f'{k} PCs', fontsize=8)
    if r == 0:
      axes[r, 0].set_title('original', fontsize=8)
  for ax in axes.flat:
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(reconstructions_out, dpi=80)
  plt.close(fig)
  return True


_DATA_FIELDS = ('dataset', 'subset', 'data_dir', 'tfds_dir', 'image_size', 'split',
                'test_split', 'test_fraction', 'val_fraction', 'split_seed',
                'train_on_validation')


@functools.lru_cache(maxsize=2)
def _cached_splits(data_fields: tuple) -> input_pipeline.SplitArrays:
  return input_pipeline.load_splits(ml_collections.ConfigDict(
      dict(zip(_DATA_FIELDS, data_fields))))[1]


def _splits(config) -> input_pipeline.SplitArrays:
  """The run's preprocessed splits, loaded once for all figures that share its data."""
  return _cached_splits(tuple(config[k] for k in _DATA_FIELDS))


def augmented_samples(run_dir: pathlib.Path, out: pathlib.Path, per_image: int = 6) -> bool:
  """A grid of training images of six classes (first column) and random augmentations."""
  if not (run_dir / 'config.json').exists():
    return False
  config = runs.load_config(run_dir)
  splits = _splits(config)
  labels = splits.labels['train']
  classes = np.unique(labels)
  shown = classes[np.linspace(0, len(classes) - 1, min(6, len(classes))).astype(int)]
  images = splits.images['train'][[np.flatnonzero(labels == k)[0] for k in shown]]
  aug = augment.from_config(config) or augment.Augmentation()
  fig, axes = plt.subplots(len(images), per_image + 1, figsize=(1.3 * (per_image + 1),
                                                               1.3 * len(images)))
  for c in range(per_image + 1):
    batch = images if c == 0 else np.asarray(
        augment.random_augment(jax.random.key(c), images, aug))
    for r in range(len(images)):
      axes[r, c].imshow(batch[r, ..., 0], cmap='gray', vmin=0, vmax=1, interpolation='nearest')
      axes[r, c].axis('off')
  axes[0, 0].set_title('original', fontsize=8)
  fig.suptitle(f'rotation up to {aug.max_rotation_degrees:g} degrees, zoom up to '
               f'{100 * aug.max_zoom:g}%', fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=80)
  plt.close(fig)
  return True


def feature_map(run_dir: pathlib.Path, out_all: pathlib.Path, out_vowels: pathlib.Path) -> bool:
  """Scatter plots of the 2-unit layer's activations on the test images, one colour per
  class: all 58 classes, and the vowels alone (log scale, as in the study)."""
  if not (run_dir / 'results.json').exists():
    return False
  config, model, state, names = runs.restore_best(run_dir)
  data = _splits(config)
  points = specialise.extract_features(model, state.params, data.images['test'])
  labels = data.labels['test']
  lo, hi = specialise.subset_ranges()['vowels']
  for out, keep, title in ((out_all, np.ones_like(labels, bool), 'all 58 classes'),
                           (out_vowels, (labels >= lo) & (labels < hi), 'vowels')):
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap('tab20' if title == 'vowels' else 'gist_ncar')
    present = np.unique(labels[keep])
    for i, k in enumerate(present):
      p = points[keep & (labels == k)] + 1e-3  # log axes: ReLU zeros shown at 1e-3
      ax.scatter(p[:, 0], p[:, 1], s=6, color=cmap(i / max(1, len(present) - 1)),
                 label=names[k].split(' (')[0] if len(present) <= 12 else None)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_title(f'2-D feature map, test images: {title}')
    if len(present) <= 12:
      ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
  return True


def write(study_dir) -> pathlib.Path:
  """Writes `report.md` and `figures/*.png` for the study in `study_dir`; returns the report."""
  study_dir = pathlib.Path(study_dir)
  figures = study_dir / 'figures'
  figures.mkdir(parents=True, exist_ok=True)
  font = _devanagari_font()
  if font:
    plt.rcParams['font.family'] = [font, 'DejaVu Sans']
  else:
    logging.info('No Devanagari font found: confusion matrices use Latin class names.')
  made = []
  for run in TRAINING_RUNS:
    name = f'curves_{run.replace("/", "_")}.png'
    if learning_curves(study_dir / run, figures / name):
      made.append((f'Learning curves: {run}', [name]))
  for run in TRAINING_RUNS[:3] + ['exp3/cnn']:
    name = f'confusion_{run.replace("/", "_")}.png'
    if confusion(study_dir / run, figures / name, font):
      made.append((f'Confusion matrix (test): {run}', [name]))
  if pca_figures(study_dir / 'exp1/numerals', figures / 'pca_components.png',
                 figures / 'pca_reconstructions.png'):
    made.append(('PCA (numerals): leading components and reconstructions from '
                 '1/4/8/24/48 components', ['pca_components.png', 'pca_reconstructions.png']))
  if augmented_samples(study_dir / 'exp3/cnn', figures / 'augmented_samples.png'):
    made.append(('Augmented training samples (experiment 3)', ['augmented_samples.png']))
  if feature_map(study_dir / 'exp3/feature_map', figures / 'feature_map_all.png',
                 figures / 'feature_map_vowels.png'):
    made.append(('2-D feature map', ['feature_map_all.png', 'feature_map_vowels.png']))

  lines = ['# charjax: the study reproduced', '',
           'Test accuracy (%), charjax in bold, then the study\'s figure and the difference '
           '(percentage points). Experiments 1 and 2 test on the same images: the test '
           'part of each subset\'s stratified split (seed 1). Experiment 3 tests on the '
           'subset\'s images in the test part of the 58-class split (seed 1), which the '
           'study cuts into the subsets; the last row gives the sizes (numerals / vowels / '
           'consonants).', '', table_markdown(study_dir), '']
  extra = []
  for subset in SUBSETS:
    exp1 = _read(study_dir / f'exp1/{subset}/results.json')
    if exp1:
      extra.append(f'- PCA + SVC, {subset}: {100 * exp1["study_75_25"]["test_accuracy"]:.1f}% '
                   f'with the study\'s own 75/25 protocol; best parameters '
                   f'{exp1["cnn_split"]["best_params"]} (CNN split).')
  svc = _read(study_dir / 'exp3/svc/results.json')
  if svc:
    for subset, r in svc['subsets'].items():
      extra.append(f'- Experiment 3, {subset}: 58-class CNN alone '
                   f'{100 * r["cnn_test_accuracy"]:.1f}%, SVC {100 * r["test_accuracy"]:.1f}% '
                   f'with {r["best_params"]}.')
  lines += extra + ['', '## Time per step', '', step_times_markdown(study_dir),
                    '', '## Figures', '']
  for title, files in made:
    lines += [f'### {title}', ''] + [f'![{f}](figures/{f})' for f in files] + ['']
  path = study_dir / 'report.md'
  path.write_text('\n'.join(lines))
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  print(write(flags.FLAGS.study_dir))


if __name__ == '__main__':
  flags.DEFINE_string('study_dir', None, 'The workdir of `python -m charjax.study`.')
  flags.mark_flags_as_required(['study_dir'])
  cli.run(main)
