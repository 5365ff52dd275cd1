"""Experiment 3's SVC grid search: scikit-learn's `GridSearchCV` against charjax's, one run.

Both search the same RBF grid with the same stratified folds on the same CNN features of
each subset; charjax's `svc.grid_search` computes each gamma's kernel matrix once and shares
it across every C and fold. Prints seconds, the ratio, whether the chosen parameters agree,
and every grid cell whose cross-validated accuracy differs. Cells can differ only where
the kernel degenerates (gamma so large that every off-diagonal kernel value underflows to
about 0 and predictions are decided by ties between intercepts, near chance accuracy):
there libsvm's two ways of computing the same kernel lead to different tie-breaks.

  python -m benchmarks.svc_grid --cnn_workdir runs/study/exp3/cnn --out runs/bench/svc_grid.json
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

from absl import app
from absl import flags
import numpy as np
from sklearn import model_selection
from sklearn import svm

from charjax import cli
from charjax.data import input_pipeline
from charjax import runs
from charjax.study import specialise
from charjax.study import svc

_CNN_WORKDIR = flags.DEFINE_string('cnn_workdir', None, 'A trained 58-class run.')
_SUBSETS = flags.DEFINE_list('subsets', ['numerals', 'vowels', 'consonants'], 'Subsets.')
_FOLDS = flags.DEFINE_integer('folds', 5, 'Cross-validation folds.')
_C = flags.DEFINE_list('C', [str(c) for c in specialise.STUDY_C], 'C grid.')
_GAMMA = flags.DEFINE_list('gamma', [str(g) for g in specialise.STUDY_GAMMA], 'gamma grid.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path (default: print only).')


def compare(x, y, *, C, gamma, folds, seed=0) -> dict:
  """Times both grid searches on (x, y); returns seconds, ratio and agreement."""
  tick = time.perf_counter()
  cv = model_selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  ref = model_selection.GridSearchCV(svm.SVC(kernel='rbf'), {'C': list(C), 'gamma': list(gamma)},
                                     cv=cv).fit(x, y)
  sklearn_s = time.perf_counter() - tick
  tick = time.perf_counter()
  ours = svc.grid_search(x, y, C=C, gamma=gamma, folds=folds, seed=seed)
  charjax_s = time.perf_counter() - tick
  theirs = ref.cv_results_['mean_test_score'].reshape(ours.mean_scores.shape)
  gap = np.abs(ours.mean_scores - theirs)
  return {'samples': int(len(y)), 'features': int(x.shape[1]), 'sklearn_s': sklearn_s,
          'charjax_s': charjax_s, 'speedup': sklearn_s / charjax_s,
          'max_cv_accuracy_gap': float(gap.max()),
          'cells_differing': [{'C': C[i], 'gamma': gamma[j], 'charjax': ours.mean_scores[i, j],
                               'sklearn': theirs[i, j]} for i, j in zip(*np.nonzero(gap > 1e-9))],
          'best_cell_gap': float(gap[np.unravel_index(np.argmax(theirs), gap.shape)]),
          'same_best_params': ours.best_params == ref.best_params_,
          'best_params': ours.best_params}


def main(argv):
  del argv
  C = [float(c) for c in _C.value]
  gamma = [float(g) for g in _GAMMA.value]
  config, model, state, _ = runs.restore_best(_CNN_WORKDIR.value)
  _, data = input_pipeline.load_splits(config)
  feats = {name: specialise.extract_features(model, state.params, images)
           for name, images in data.images.items()}
  per_subset = specialise.subset_features(feats, data.labels)
  rows = []
  for name in _SUBSETS.value:
    x, y, _, _ = per_subset[name]
    row = {'subset': name, **compare(x, y, C=C, gamma=gamma, folds=_FOLDS.value)}
    rows.append(row)
    print(f'{name:<11}{row["samples"]:>6} samples  sklearn {row["sklearn_s"]:8.1f} s  '
          f'charjax {row["charjax_s"]:7.1f} s  {row["speedup"]:5.2f}x  '
          f'same best {row["same_best_params"]} (CV gap there {row["best_cell_gap"]:.1e}); '
          f'{len(row["cells_differing"])} of {len(C) * len(gamma)} cells differ, by up to '
          f'{row["max_cv_accuracy_gap"]:.3f}', flush=True)
    for cell in row['cells_differing']:
      print(f'    C={cell["C"]:g} gamma={cell["gamma"]:g}: charjax {cell["charjax"]:.4f} '
            f'sklearn {cell["sklearn"]:.4f}',
          flush=True)
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'machine': platform.processor() or platform.machine(),
                               'grid': {'C': C, 'gamma': gamma}, 'folds': _FOLDS.value,
                               'cnn_workdir': _CNN_WORKDIR.value, 'rows': rows}, indent=2))


if __name__ == '__main__':
  flags.mark_flags_as_required(['cnn_workdir'])
  cli.run(main)  # applies charjax.runtime.cpu_settings on CPU, as charjax's commands do
