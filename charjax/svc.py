"""RBF support-vector classifiers: grid search with scikit-learn, saved and applied safely.

A fitted `sklearn.svm.SVC` is exported to plain arrays (`.npz` written and read with
`allow_pickle=False`) and applied by `decision_votes` / `predict` in NumPy, with libsvm's
one-vs-one voting, so a classifier received from someone else is loaded without executing
any of its content (no pickle, no joblib).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib

import numpy as np
from sklearn import model_selection
from sklearn import svm

_ARRAYS = ('support_vectors', 'dual_coef', 'intercept', 'n_support', 'classes')


def grid_search(features: np.ndarray, labels: np.ndarray, *, C, gamma, folds: int = 5,
                seed: int = 0, n_jobs: int | None = None) -> model_selection.GridSearchCV:
  """Stratified `folds`-fold cross-validated grid search of an RBF SVC over `C` x `gamma`;
  refits the best on all of `features`."""
  cv = model_selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  search = model_selection.GridSearchCV(
      svm.SVC(kernel='rbf'), {'C': list(C), 'gamma': list(gamma)}, cv=cv, n_jobs=n_jobs)
  return search.fit(features, labels)


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
  sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
  return np.exp(-gamma * np.maximum(sq, 0.0))


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
