"""Score a finished run on any labelled data: accuracy, per-class accuracy, confusion matrix.

  python -m charjax.evaluate --workdir runs/consonants test
  python -m charjax.evaluate --workdir runs/all_classes dhcd:test --skip_unknown_classes
  python -m charjax.evaluate --workdir runs/numerals my_digits/        # <class>/<image>
  python -m charjax.evaluate --svc runs/study/exp3/svc/svc_vowels.npz vowels_scans.zip
  python -m charjax.evaluate --workdir runs/recipe_x3 validation       # the seeds' ensemble

DATA is one of
- `train`, `validation` or `test`: the run's own split (the images it was trained,
  selected or tested on, as recorded in its `splits.json`);
- `<dataset>:<split>` of a registered dataset (`nhcd:all`, `dhcd:train`, `dhcd:test`: the
  publisher's split; `<dataset>:<subset>/<split>` for a subset, e.g. `nhcd:vowels/train`);
- a folder or archive (zip, tar) of `<class>/<image>` files, any depth above: a class folder
  is named by the class's display name (`ka (क)`), its glyph (`क`), its Latin label where
  that is unique (`ka`), NHCD's `<subset>/<number>` or DHCD's `character_<n>[_name]` /
  `digit_<n>` (so NHCD's and DHCD's own archives are read as they are).

Images go through the training preprocessing (`charjax.data.preprocess`; no cropping): with
the dataset's own ink polarity for a split, judged from each image's border for a folder
(as `charjax.predict` does). Classes are matched to the run's by name; data holding a class
the run does not have is refused, naming it (`--skip_unknown_classes` leaves those images
out and counts them). `--tta shift1|shift2` averages the scores over whole-pixel shifts of
each image (test-time augmentation; choose it on `validation`, never on `test`).
`--checkpoint last` scores the run's last epoch instead of its best-validation-loss one (a
run keeps both): whether the last epoch reads new images better is a choice for
`validation` too.

Several runs score as an ensemble, their class probabilities averaged: `--workdir` given
more than once, or a folder of `charjax.seeds` (every `seed_<k>/` in it). The runs must have
the same classes and, for the run's own splits, the same split; the report also holds each
member's accuracy. Like TTA, an ensemble is chosen on `validation`. The report
(`--out`, default `<workdir>/evaluations/<data>.json`) holds the accuracy, per-class
accuracy, confusion matrix (rows: true class, in the run's class order), every image scored
wrong (file name, true and predicted class, their scores), the class mapping used and what
was read.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
import sys

from absl import app
from absl import flags
import numpy as np

from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax import predict
from charjax import progress
from charjax import rundir
from charjax import runs
from charjax.data import archives
from charjax.data import classes
from charjax.data import input_pipeline
from charjax.data import registry
from charjax.data import sources
from charjax.study import svc as svc_lib

RUN_SPLITS = ('train', 'validation', 'test')
_DHCD_FOLDER = re.compile(r'^((?:character|digit)_\d+)(?:_\w+)?$')
# Images scored per call of the network (a fixed shape: one compilation).
CHUNK = 500


# Test-time augmentation: the views whose scores are averaged, as (rows, columns) shifts in
# whole pixels (positive: down, right; the uncovered border is background, 0).
TTA_VIEWS = {
    'none': ((0, 0),),
    'shift1': ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)),
    'shift2': ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1)),
}


class EvaluationError(ValueError):
  """The data cannot be evaluated with this run (unknown classes, nothing found, ...)."""


def ensemble_members(workdirs: str | list[str]) -> list[str]:
  """The runs that `workdirs` names: each a run folder, or a `charjax.seeds` folder standing
  for its `seed_<k>/` runs (in seed order)."""
  members = []
  for workdir in [workdirs] if isinstance(workdirs, str) else workdirs:
    path = pathlib.Path(workdir)
    seeds = sorted((p for p in path.glob('seed_*') if p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    if seeds and not (path / 'config.json').exists():
      members += [str(p) for p in seeds]
    else:
      members.append(str(workdir))
  if not members:
    raise EvaluationError('Give at least one run.')
  return members


def _check_same_runs(members: list[str], classifiers: list, own_split: bool) -> None:
  """Refuses an ensemble whose runs disagree on classes, input size or (for their own
  splits) the images in each split."""
  def split_of(run):
    return json.loads((pathlib.Path(run) / 'splits.json').read_text())
  first_split = split_of(members[0]) if own_split and len(members) > 1 else None
  for member, classifier in zip(members[1:], classifiers[1:]):
    if (classifier.class_names, classifier.size) != (classifiers[0].class_names,
                                                     classifiers[0].size):
      raise EvaluationError(f'{member} has other classes or input size than {members[0]}; an '
                            'ensemble needs runs of the same classes.')
    if own_split and split_of(member) != first_split:
      raise EvaluationError(f'{member} was trained on another split than {members[0]}: their '
                            'own splits cannot be scored together (give a dataset split or '
                            'a folder).')


def class_aliases(run_classes: list[str]) -> dict[str, str]:
  """Folder name (or `<subset>/<folder>`) -> one of `run_classes`, for every accepted form."""
  aliases = {name: name for name in run_classes}
  known = [c for c in classes.NHCD_SUBSETS['all'] + classes.DHCD_CLASSES if c.name in aliases]
  latin = collections.Counter(c.latin for c in classes.NHCD_SUBSETS['all'])
  for c in known:
    aliases.setdefault(c.glyph, c.name)
    if latin[c.latin] == 1:
      aliases.setdefault(c.latin, c.name)
    if c.folder.startswith(('character_', 'digit_')):
      aliases.setdefault(c.folder, c.name)
    else:
      aliases.setdefault(f'{c.subset}/{c.folder}', c.name)
  return aliases


def _class_key(name: str) -> tuple[str, str]:
  """(folder, subset-qualified folder) of an image path: its class folder's two forms."""
  parts = name.split('/')
  if len(parts) < 2:
    raise EvaluationError(f'{name} is not in a class folder (expected <class>/<image>).')
  folder = parts[-2]
  match = _DHCD_FOLDER.match(folder)
  if match:
    folder = match.group(1)
  return folder, '/'.join(parts[-3:-1]) if len(parts) >= 3 else folder


def read_folder(path: pathlib.Path, run_classes: list[str], *, skip_unknown: bool):
  """(grey images, labels in the run's order, their file names, mapping, skipped counts) of
  `<class>/<image>`."""
  aliases = class_aliases(run_classes)
  index = {name: i for i, name in enumerate(run_classes)}
  names = [n for n in archives.list_files(path) if n.lower().endswith(sources.IMAGE_SUFFIXES)]
  if not names:
    raise EvaluationError(f'No images ({", ".join(sources.IMAGE_SUFFIXES)}) in {path}.')
  label_of, mapping, unknown = {}, {}, collections.Counter()
  nhcd_folders = {f'{c.subset}/{c.folder}' for c in classes.NHCD_SUBSETS['all']}
  for name in names:
    folder, qualified = _class_key(name)
    # NHCD's class folders are numbers within a subset: read only with their subset.
    key = qualified if qualified in nhcd_folders else folder
    target = aliases.get(key)
    if target is None:
      unknown[key] += 1
      continue
    label_of[name] = index[target]
    mapping[key] = target
  _check_unknown(unknown, run_classes, skip_unknown)
  images, labels, read = [], [], []
  for name, data in archives.iter_files(path, set(label_of)):
    grey = sources.decode_grayscale(name, data)[..., 0].astype(np.float32)
    images.append(grey)
    labels.append(label_of[name])
    read.append(name)
  return images, np.array(labels, np.int32), read, mapping, dict(unknown)


def _check_unknown(unknown: collections.Counter, run_classes: list[str], skip: bool) -> None:
  if unknown and not skip:
    shown = ', '.join(f'{k} ({n} images)' for k, n in sorted(unknown.items())[:12])
    raise EvaluationError(
        f'{sum(unknown.values())} images are of classes the run does not have: {shown}'
        f'{" ..." if len(unknown) > 12 else ""}. The run\'s classes are '
        f'{", ".join(run_classes[:12])}{" ..." if len(run_classes) > 12 else ""}. Pass '
        '--skip_unknown_classes to leave them out.')


def read_dataset_split(spec: str, config, run_classes: list[str], *, skip_unknown: bool):
  """(model inputs, labels, file names, mapping, skipped) of `<dataset>:[<subset>/]<split>`."""
  dataset, _, rest = spec.partition(':')
  subset, _, split = rest.rpartition('/')
  subset = subset or 'all'
  examples, keep, inputs, labels = input_pipeline.load_run_classes(
      dataset, subset, split, run_classes, image_size=config.image_size,
      data_dir=config.data_dir or None, tfds_dir=config.tfds_dir or None)
  unknown = collections.Counter(examples.class_names[l] for l in examples.labels[~keep])
  _check_unknown(unknown, run_classes, skip_unknown)
  known = set(run_classes)
  mapping = {n: n for n in examples.class_names if n in known}
  if not keep.any():
    raise EvaluationError(f'{spec} holds no images of the run\'s classes.')
  return inputs, labels, list(examples.file_names[keep]), mapping, dict(unknown)


def shifted(inputs: np.ndarray, rows: int, cols: int) -> np.ndarray:
  """(N, H, W, C) inputs moved by whole pixels, the uncovered border filled with 0."""
  out = np.zeros_like(inputs)
  h, w = inputs.shape[1:3]
  out[:, max(rows, 0):h + min(rows, 0), max(cols, 0):w + min(cols, 0)] = inputs[
      :, max(-rows, 0):h - max(rows, 0), max(-cols, 0):w - max(cols, 0)]
  return out


def scores_of(classifier: predict.Classifier, inputs: np.ndarray, tta: str = 'none') -> np.ndarray:
  """The classifier's scores of every input, in fixed-size chunks (one compilation); with
  `tta`, the mean of its scores over `TTA_VIEWS[tta]`."""
  if tta not in TTA_VIEWS:
    raise EvaluationError(f'tta={tta!r} is not one of {", ".join(TTA_VIEWS)}')
  if tta != 'none':
    return np.mean([scores_of(classifier, shifted(inputs, r, c)) for r, c in TTA_VIEWS[tta]],
                   axis=0)
  out = []
  for start in range(0, len(inputs), CHUNK):
    chunk = inputs[start:start + CHUNK]
    padded = np.concatenate([chunk, np.zeros((CHUNK - len(chunk),) + chunk.shape[1:],
                                             chunk.dtype)]) if len(chunk) < CHUNK else chunk
    out.append(np.asarray(classifier.scores(padded))[:len(chunk)])
  return np.concatenate(out)


def evaluate(workdir: str | list[str] | None, data: str, *, svc: str | None = None,
             skip_unknown: bool = False, data_dir: str = '', tfds_dir: str = '',
             tta: str = 'none', checkpoint: str = 'best') -> dict:
  """Scores the run (or the SVC on its features) on `data` (see the module docstring).

  `workdir` may name several runs (a list, or a `charjax.seeds` folder): their ensemble is
  scored, class probabilities averaged. `data_dir` / `tfds_dir` say where a dataset split's
  archive and prepared data are, when not where the run's config looked. `tta` averages the
  scores over shifted copies of each image (`TTA_VIEWS`): choose it on the `validation`
  split, then apply it to test. `checkpoint='last'` scores each run's last epoch instead of
  its best-validation-loss one (`runs.restore`); like TTA, choose it on `validation`.
  """
  if tta not in TTA_VIEWS:
    raise EvaluationError(f'--tta={tta!r} is not one of {", ".join(TTA_VIEWS)}')
  if checkpoint not in runs.KEPT:
    raise EvaluationError(f'--checkpoint={checkpoint!r} is not one of {", ".join(runs.KEPT)}')
  if svc and checkpoint != 'best':
    raise EvaluationError('An SVC reads the features of the network it was fitted on (its '
                          'best checkpoint): --checkpoint=last does not apply.')
  if workdir is None:
    workdir = svc_lib.load(svc)[1]['cnn_workdir']  # the network the SVC reads
  members = ensemble_members(workdir)
  if svc and len(members) > 1:
    raise EvaluationError('An SVC reads one network\'s features: give one --workdir with --svc.')
  classifiers = [predict.load_classifier(m, svc, checkpoint) for m in members]
  _check_same_runs(members, classifiers, data in RUN_SPLITS)
  workdir, classifier = members[0], classifiers[0]
  config = runs.load_config(workdir)
  with config.unlocked():
    config.data_dir = data_dir or config.data_dir
    config.tfds_dir = tfds_dir or config.tfds_dir
  run_classes = classifier.class_names
  source = {'data': data}
  if data in RUN_SPLITS:
    if svc:
      raise EvaluationError('An SVC scores its own subset\'s splits with charjax.study; give it '
                            'a dataset split or a folder.')
    examples, arrays = input_pipeline.load_splits(config)
    inputs, labels = arrays.images[data], arrays.labels[data]
    names = list(examples.file_names[arrays.indices[data]])
    mapping, skipped = {n: n for n in run_classes}, {}
    # A run's training images, and its validation images when it trained on them too
    # (`train_on_validation`), say nothing about how it reads new ones.
    trained_on = data == 'train' or (data == 'validation' and config.train_on_validation)
    source.update(kind='run split', test_protocol=arrays.test_protocol, trained_on=trained_on)
  elif ':' in data and not pathlib.Path(data).exists():
    inputs, labels, names, mapping, skipped = read_dataset_split(
        data, config, run_classes, skip_unknown=skip_unknown)
    source.update(kind='dataset split', preprocessing='training (the dataset\'s ink polarity)')
  else:
    path = pathlib.Path(data)
    if not path.exists():
      raise EvaluationError(f'{data} is neither a split ({", ".join(RUN_SPLITS)}, '
                            '<dataset>:<split>) nor an existing folder or archive.')
    greys, labels, names, mapping, skipped = read_folder(path, run_classes,
                                                         skip_unknown=skip_unknown)
    if not len(labels):
      raise EvaluationError(f'{data} holds no images of the run\'s classes.')
    inputs = np.stack([predict.to_input(g, config.image_size) for g in greys])
    source.update(kind='folder', path=str(path.resolve()),
                  preprocessing='training (ink polarity judged from each image\'s border)')
  member_scores = [scores_of(c, inputs, tta) for c in classifiers]
  scores = np.mean(member_scores, axis=0)
  if not np.all(np.isfinite(scores)):
    raise EvaluationError('The classifier gave NaN or infinite scores: its checkpoint is '
                          'probably damaged.')
  predictions = np.argmax(scores, axis=-1)
  confusion = rundir.confusion_matrix(labels, predictions, len(run_classes))
  counts = confusion.sum(1)
  ensemble = {} if len(members) == 1 else {
      'ensemble': members,
      'member_accuracies': [float(np.mean(np.argmax(m, -1) == labels)) for m in member_scores]}
  return {
      'workdir': str(workdir), 'svc': svc, **source, 'tta': tta, **ensemble,
      'checkpoint': checkpoint,
      'checkpoint_epochs': [runs.checkpoint_epoch(m, checkpoint) for m in members],
      'tta_views': [list(v) for v in TTA_VIEWS[tta]],
      'images': int(len(labels)), 'accuracy': float(np.mean(predictions == labels)),
      'per_class_accuracy': {n: float(confusion[i, i] / counts[i])
                             for i, n in enumerate(run_classes) if counts[i]},
      'images_per_class': {n: int(counts[i]) for i, n in enumerate(run_classes) if counts[i]},
      'class_names': run_classes, 'confusion_matrix': confusion.tolist(),
      'per_subset_accuracy': rundir.subset_accuracy(confusion, run_classes,
                                                    registry.get(config.dataset).subsets),
      'class_mapping': mapping, 'skipped_unknown_classes': skipped,
      'misclassified': misclassified(names, labels, scores, run_classes),
  }


def misclassified(names: list[str], labels: np.ndarray, scores: np.ndarray,
                  class_names: list[str]) -> list[dict]:
  """Every image scored wrong, in the order read: its file name, true and predicted class
  and the scores of both (probabilities for a network or an ensemble; for an SVC, the
  share of one-vs-one votes), so the errors can be looked at one by one."""
  predictions = np.argmax(scores, axis=-1)
  return [{'image': str(names[i]), 'label': class_names[labels[i]],
           'predicted': class_names[predictions[i]],
           'predicted_score': float(scores[i, predictions[i]]),
           'label_score': float(scores[i, labels[i]])}
          for i in np.flatnonzero(predictions != labels)]


def _default_out(workdir: str, data: str) -> pathlib.Path:
  tag = re.sub(r'[^\w.-]+', '_', pathlib.Path(data).name if '/' in data and ':' not in data
               else data).strip('_') or 'data'
  return pathlib.Path(workdir) / 'evaluations' / f'{tag}.json'


def main(argv):
  progress.plain_logs()  # no Orbax or TFDS INFO lines around the answer
  if len(argv) != 2:
    raise app.UsageError('Give one DATA: a split (test), <dataset>:<split>, or a folder.')
  if not (flags.FLAGS.workdir or flags.FLAGS.svc):
    raise app.UsageError('Give --workdir (a trained run) or --svc (a saved SVC).')
  try:
    report = evaluate(flags.FLAGS.workdir, argv[1], svc=flags.FLAGS.svc,
                      skip_unknown=flags.FLAGS.skip_unknown_classes,
                      data_dir=flags.FLAGS.data_dir, tfds_dir=flags.FLAGS.tfds_dir,
                      tta=flags.FLAGS.tta, checkpoint=flags.FLAGS.checkpoint)
  except (EvaluationError, runs.RunError, checkpointing.CheckpointError,
          configuration.ConfigError, archives.ArchiveError, registry.UnknownDatasetError,
          sources.DataNotFoundError) as e:
    sys.exit(f'charjax: {e}')
  tag = (argv[1] + ('' if flags.FLAGS.tta == 'none' else f'_tta_{flags.FLAGS.tta}')
         + ('' if flags.FLAGS.checkpoint == 'best' else f'_{flags.FLAGS.checkpoint}'))
  if 'ensemble' in report:  # beside the seeds, or the first run's, named as an ensemble
    seeds_dir = len(flags.FLAGS.workdir) == 1 and flags.FLAGS.workdir[0]
    tag, home = (tag, seeds_dir) if seeds_dir else (
        f'{tag}_ensemble_of_{len(report["ensemble"])}', report['workdir'])
  else:
    home = report['workdir']
  out = pathlib.Path(flags.FLAGS.out) if flags.FLAGS.out else _default_out(home, tag)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
  skipped = sum(report['skipped_unknown_classes'].values())
  members = (f' (ensemble of {len(report["ensemble"])} runs; each: ' + ', '.join(
      f'{100 * a:.2f}' for a in report['member_accuracies']) + ')') if 'ensemble' in report else ''
  print(f'{argv[1]}: accuracy {100 * report["accuracy"]:.2f}% on {report["images"]} images, '
        f'{len(report["misclassified"])} wrong{members}'
        f'{f" ({skipped} of unknown classes left out)" if skipped else ""}'
        f'{"; the run trained on these images" if report.get("trained_on") else ""}; '
        f'report in {out}')


if __name__ == '__main__':
  flags.DEFINE_multi_string('workdir', None, 'A finished training run, or a charjax.seeds '
                            'folder; several score as an ensemble (probabilities averaged).')
  flags.DEFINE_string('svc', None, 'An SVC saved by charjax.study.specialise (svc_<subset>.npz).')
  flags.DEFINE_bool('skip_unknown_classes', False,
                    'Leave out images of classes the run does not have (else refuse).')
  flags.DEFINE_string('data_dir', '', 'Where a dataset split\'s archive is (default: the '
                      'run\'s config, then the usual places).')
  flags.DEFINE_string('tfds_dir', '', 'Where prepared datasets are (default: the run\'s).')
  flags.DEFINE_string('out', '', 'Report path (default <workdir>/evaluations/<data>.json, '
                      '<data>_tta_<views>.json with --tta).')
  flags.DEFINE_enum('tta', 'none', list(TTA_VIEWS), 'Test-time augmentation: average the '
                    'scores over shifted copies (shift1: 5 views, +-1 pixel; shift2: 9 views). '
                    'Choose it on the validation split.')
  flags.DEFINE_enum('checkpoint', 'best', list(runs.KEPT), 'Which kept state of each run to '
                    'score: its best-validation-loss epoch or its last one. Choose it on the '
                    'validation split.')
  cli.run(main)
