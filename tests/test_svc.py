"""The portable SVC: same decisions and predictions as scikit-learn, loaded without pickle."""

import numpy as np
import pytest
from sklearn import model_selection
from sklearn import svm

from charjax.study import svc


def _data(classes=4, n=120, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 2, (classes, dim))
  y = rng.integers(0, classes, n)
  return centres[y] + rng.normal(0, 1.0, (n, dim)), y + 3  # labels need not start at 0


def test_exported_svc_matches_sklearn_decisions_and_predictions(tmp_path):
  x, y = _data()
  model = svm.SVC(kernel='rbf', C=10, gamma=0.1, decision_function_shape='ovo').fit(x, y)
  svc.save(tmp_path / 'svc.npz', svc.export(model), {'subset': 'test'})
  arrays, meta = svc.load(tmp_path / 'svc.npz')
  xt, _ = _data(seed=1)
  decisions, _ = svc.decision_votes(arrays, xt)
  np.testing.assert_allclose(decisions, model.decision_function(xt), rtol=1e-7, atol=1e-9)
  np.testing.assert_array_equal(svc.predict(arrays, xt), model.predict(xt))
  assert meta == {'subset': 'test'}


def test_grid_search_picks_from_the_grid():
  x, y = _data()
  search = svc.grid_search(x, y, C=[1, 10], gamma=[0.01, 0.1], folds=3)
  assert search.best_params['C'] in (1, 10) and search.best_params['gamma'] in (0.01, 0.1)
  assert search.best_estimator.score(x, y) > 0.8


def test_grid_search_equals_sklearn_grid_search_cv():
  x, y = _data(n=150, dim=5)
  C, gamma = [0.1, 1, 10, 100], [0.01, 0.1, 1, 10]
  ours = svc.grid_search(x, y, C=C, gamma=gamma, folds=4, seed=3)
  cv = model_selection.StratifiedKFold(n_splits=4, shuffle=True, random_state=3)
  ref = model_selection.GridSearchCV(svm.SVC(kernel='rbf'), {'C': C, 'gamma': gamma},
                                     cv=cv).fit(x, y)
  np.testing.assert_allclose(ours.mean_scores.ravel(), ref.cv_results_['mean_test_score'],
                             atol=1e-12)  # C-major, as scikit-learn orders its grid
  assert ours.best_params == ref.best_params_ and ours.best_score == ref.best_score_
  np.testing.assert_array_equal(ours.best_estimator.support_vectors_,
                                ref.best_estimator_.support_vectors_)


def test_load_refuses_pickles_and_incomplete_files(tmp_path):
  evil = tmp_path / 'evil.npz'
  np.savez(evil, support_vectors=np.array([{'a': 1}], dtype=object))
  (tmp_path / 'evil.json').write_text('{}')
  with pytest.raises(ValueError):  # object arrays need pickle: refused by allow_pickle=False
    svc.load(evil)
  partial = tmp_path / 'partial.npz'
  np.savez(partial, classes=np.arange(3))
  with pytest.raises(ValueError, match='missing arrays'):
    svc.load(partial)


def test_grid_search_scores_do_not_depend_on_the_number_of_threads():
  x, y = _data()
  one, three = (svc.grid_search(x, y, C=[1, 10, 100], gamma=[0.01, 0.1], folds=3,
                                workers=w) for w in (1, 3))
  np.testing.assert_array_equal(one.fold_scores, three.fold_scores)
  assert one.best_params == three.best_params
