"""RBF support-vector classifiers: grid search with scikit-learn, saved and applied safely.

A fitted `sklearn.svm.SVC` is exported to plain arrays (`.npz` written and read with
`allow_pickle=False`) and applied by `decision_votes` / `predict` in NumPy, with libsvm's
one-vs-one voting, so a classifier received from someone else is loaded without executing
any of its content (no pickle, no joblib).
"""

from __future__ import annotations

from concurrent import futures
import dataclasses
import functools
import itertools
import json
import os
import pathlib

import numpy as np
from sklearn import model_selection
from sklearn import svm

_ARRAYS = ('support_vectors', 'dual_coef', 'intercept', 'n_support', 'classes')


@dataclasses.dataclass(frozen=True)
class GridSearch:
  """Outcome of `grid_search`: cross-validated accuracy per (C, gamma) and the refit best."""
  C: tuple[float, ...]
  gamma: tuple[float, ...]
  fold_scores: np.ndarray  # [len(C), len(gamma), folds]
  best_params: dict
  best_score: float
  best_estimator: svm.SVC

  @property
  def mean_scores(self) -> np.ndarray:
    """Mean cross-validated accuracy, [len(C), len(gamma)]."""
    return self.fold_scores.mean(-1)


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Pairwise squared Euclidean distances in float64, [len(x), len(y)]."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
  return np.maximum(d, 0.0)


def _usable_cpus() -> int:
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def grid_search(features: np.ndarray, labels: np.ndarray, *, C, gamma, folds: int = 5,
                seed: int = 0, workers: int | None = None) -> GridSearch:
  """Stratified `folds`-fold cross-validated grid search of an RBF SVC over `C` x `gamma`;
  refits the best on all of `features`.

  The same search as scikit-learn's `GridSearchCV(SVC(kernel='rbf'), ...)` with the same
  folds and the same choice among ties (the first best in C-major order), but each
  gamma's kernel matrix is computed once with a matrix product and shared by every C and
  fold (`SVC(kernel='precomputed')`), instead of libsvm recomputing kernel rows in every fit.
  Cross-validated accuracies are identical (`benchmarks/svc_grid.py` compares them) except
  at degenerate grid points, where gamma is so large that the kernel is numerically the
  identity and predictions come down to ties; there the two may break ties differently.
  The fits of one gamma (every fold and C) run on `workers` threads (default: the CPUs
  this process may use; libsvm releases the GIL while it fits and predicts); each fit is
  independent, so the scores do not depend on the number of threads.
  """
  C, gamma = tuple(C), tuple(gamma)
  labels = np.asarray(labels)
  cv = model_selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  splits = list(cv.split(features, labels))
  distances = squared_distances(features, features)
  scores = np.zeros((len(C), len(gamma), folds))
  cells = list(itertools.product(range(folds), range(len(C))))  # (fold, C index)

  def score(kernel, cell):
    (train, test), c = splits[cell[0]], C[cell[1]]
    model = svm.SVC(kernel='precomputed', C=c).fit(kernel[np.ix_(train, train)], labels[train])
    return np.mean(model.predict(kernel[np.ix_(test, train)]) == labels[test])

  with futures.ThreadPoolExecutor(max_workers=workers or _usable_cpus()) as pool:
    for j, g in enumerate(gamma):
      values = pool.map(functools.partial(score, np.exp(-g * distances)), cells)
      for (f, i), value in zip(cells, values):
        scores[i, j, f] = value
  i, j = np.unravel_index(np.argmax(scores.mean(-1)), scores.shape[:2])
  best = svm.SVC(kernel='rbf', C=C[i], gamma=gamma[j]).fit(features, labels)
  return GridSearch(C=C, gamma=gamma, fold_scores=scores,
                    best_params={'C': C[i], 'gamma': gamma[j]},
                    best_score=float(scores[i, j].mean()), best_estimator=best)


def export(model: svm.SVC) -> dict[str, np.ndarray]:
  """The arrays that define a fitted RBF `SVC`'s predictions."""
  if model.kernel != 'rbf':
    raise ValueError(f'Only RBF SVCs are exported, not kernel={model.kernel!r}.')
  return {
      'support_vectors': np.asarray(model.support_vectors_, np.float64),
      'dual_coef': np.asarray(model.dual_coef_, np.float64),
      'intercept': np.asarray(model.intercept_, np.float64),
      'n_support': np.asarray(model.n_support_, np.int64),
      'classes': np.asarray(model.classes_, np.int64),
      'gamma': np.asarray(model._gamma, np.float64),  # resolved value ('scale' -> number)
  }


def save(path: os.PathLike | str, arrays: dict[str, np.ndarray], metadata: dict) -> None:
  """Writes `arrays` to `path` (.npz) and `metadata` beside it as JSON (`path`.json)."""
  path = pathlib.Path(path)
  np.savez(path, **arrays)
  path.with_suffix('.json').write_text(json.dumps(metadata, indent=2, ensure_ascii=False))


def load(path: os.PathLike | str) -> tuple[dict[str, np.ndarray], dict]:
  """Reads what `save` wrote; never unpickles. Raises ValueError on a malformed file."""
  path = pathlib.Path(path)
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  missing = set(_ARRAYS + ('gamma',)) - set(arrays)
  if missing:
    raise ValueError(f'{path} is not a charjax SVC: missing arrays {sorted(missing)}.')
  k = len(arrays['classes'])
  sv = arrays['support_vectors']
  if (arrays['dual_coef'].shape != (k - 1, sv.shape[0]) or arrays['n_support'].sum() != sv.shape[0]
      or arrays['intercept'].shape != (k * (k - 1) // 2,)):
    raise ValueError(f'{path} is not a consistent SVC: array shapes do not agree.')
  return arrays, json.loads(path.with_suffix('.json').read_text())


def rbf_kernel(x: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
  """exp(-gamma |x_i - y_j|^2) for every pair of rows."""
  return np.exp(-gamma * squared_distances(x, y))


def decision_votes(arrays: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(one-vs-one decision values (N, pairs), votes per class (N, classes)) as libsvm counts."""
  kernel = rbf_kernel(np.asarray(x, np.float64), arrays['support_vectors'],
                      float(arrays['gamma']))
  starts = np.concatenate([[0], np.cumsum(arrays['n_support'])])
  coef = arrays['dual_coef']
  k = len(arrays['classes'])
  decisions = []
  votes = np.zeros((x.shape[0], k), np.int64)
  for p, (i, j) in enumerate(itertools.combinations(range(k), 2)):
    si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
    value = (kernel[:, si] @ coef[j - 1, si] + kernel[:, sj] @ coef[i, sj]
             + arrays['intercept'][p])
    decisions.append(value)
    votes[:, i] += value > 0
    votes[:, j] += value <= 0
  return np.stack(decisions, 1), votes


def predict(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
  """Class labels by one-vs-one voting (ties to the lower class index, as libsvm)."""
  return arrays['classes'][np.argmax(decision_votes(arrays, x)[1], axis=1)]
