"""Split determinism, stratification and writer-disjointness."""

import collections

import numpy as np
import pytest

from charjax.data import splits


def fake_labels_writers(classes=10, writers=20, samples=3):
  labels = np.repeat(np.arange(classes), writers * samples)
  writer = np.tile(np.repeat([f'{w:03d}' for w in range(writers)], samples), classes)
  return labels, writer


def test_stratified_split_is_deterministic_partition_and_stratified():
  labels, _ = fake_labels_writers()
  a = splits.stratified_split(labels, seed=1)
  b = splits.stratified_split(labels, seed=1)
  for name in splits.SPLITS:
    np.testing.assert_array_equal(a[name], b[name])
  merged = np.concatenate([a[n] for n in splits.SPLITS])
  assert sorted(merged.tolist()) == list(range(len(labels)))
  assert len(a['test']) == 90  # 15% of 600
  assert len(a['validation']) == round(0.176 * 510)
  for name in splits.SPLITS:
    counts = collections.Counter(labels[a[name]].tolist())
    assert max(counts.values()) - min(counts.values()) <= 1
  c = splits.stratified_split(labels, seed=2)
  assert not np.array_equal(a['test'], c['test'])


def test_writer_disjoint_split_keeps_each_writer_in_one_split():
  labels, writers = fake_labels_writers()
  a = splits.writer_disjoint_split(labels, writers, seed=1)
  b = splits.writer_disjoint_split(labels, writers, seed=1)
  owners = [set(writers[a[n]]) for n in splits.SPLITS]
  assert all(owners) and not (owners[0] & owners[1] or owners[0] & owners[2]
                              or owners[1] & owners[2])
  for name in splits.SPLITS:
    np.testing.assert_array_equal(a[name], b[name])
  assert sum(len(a[n]) for n in splits.SPLITS) == len(labels)


def test_writer_split_needs_writers():
  labels, _ = fake_labels_writers()
  with pytest.raises(ValueError, match='writer id'):
    splits.writer_disjoint_split(labels, np.full(len(labels), ''))


def test_saved_splits_list_file_names(tmp_path):
  labels, _ = fake_labels_writers(classes=2, writers=10, samples=1)
  names = np.array([f'f{i}.jpg' for i in range(len(labels))])
  parts = splits.stratified_split(labels)
  splits.save(tmp_path / 'splits.json', parts, names)
  import json
  saved = json.loads((tmp_path / 'splits.json').read_text())
  assert saved['test'] == names[parts['test']].tolist()
