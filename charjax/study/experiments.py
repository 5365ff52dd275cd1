"""The whole study in one command: experiments 1, 2 and 3, the feature map, then the report.

  python -m charjax.study --workdir runs/study            # the study's settings
  python -m charjax.study --workdir runs/quick --quick    # smoke run: 2 epochs, small grids

Layout of the workdir: `exp1/<subset>` (PCA + SVC), `exp2/<subset>` (CNN per subset),
`exp3/cnn` (58-class CNN with augmentation), `exp3/svc` (SVCs on its features),
`exp3/feature_map` (the 2-unit variant), `report.md` and `figures/`. A step whose
`results.json` exists is not redone, so rerunning the command resumes an interrupted study.
`study.json` records each step's wall-clock time.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging

from charjax.data import archives
from charjax.study import baseline
from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax import progress
from charjax.study import report
from charjax import runs
from charjax.study import specialise
from charjax import train
from charjax.data import sources
from charjax.configs import all_classes
from charjax.configs import consonants
from charjax.configs import feature_map
from charjax.configs import numerals
from charjax.configs import pca_svc
from charjax.configs import vowels

SUBSET_CONFIGS = {'numerals': numerals, 'vowels': vowels, 'consonants': consonants}
QUICK_SVC = {'C': (10.0,), 'gamma': (0.01, 0.1), 'folds': 2}


def _configure(config, overrides: dict):
  """`config` with each override whose field it has set (`'model.dense_features'` reaches
  into a sub-config)."""
  for key, value in overrides.items():
    *sections, field = key.split('.')
    target = config
    for section in sections:
      target = target.get(section) if hasattr(target, 'get') else None
    if target is not None and field in target:
      target[field] = value
  return config


def steps(*, quick: bool = False, overrides: dict | None = None):
  """[(name, relative workdir, function of the absolute workdir)] in the study's order.

  `overrides` (e.g. data_dir, image_size, model.dense_features) apply to every config
  that has the field.
  """
  overrides = dict(overrides or {})
  variant = 'quick' if quick else ''
  out = []
  for subset in SUBSET_CONFIGS:
    config = _configure(pca_svc.get_config(variant), {**overrides, 'subset': subset})
    out.append((f'exp1 {subset}', f'exp1/{subset}', lambda d, c=config: baseline.run(c, d)))
  for subset, module in SUBSET_CONFIGS.items():
    config = _configure(module.get_config(variant), overrides)
    out.append((f'exp2 {subset}', f'exp2/{subset}',
                lambda d, c=config: train.train_and_evaluate(c, d)))
  config = _configure(all_classes.get_config(variant), overrides)
  out.append(('exp3 cnn', 'exp3/cnn', lambda d, c=config: train.train_and_evaluate(c, d)))
  out.append(('exp3 svc', 'exp3/svc', lambda d: specialise.run(
      d.parent / 'cnn', d, **(QUICK_SVC if quick else {}))))
  config = _configure(feature_map.get_config(variant), overrides)
  out.append(('feature map', 'exp3/feature_map',
              lambda d, c=config: train.train_and_evaluate(c, d)))
  return out


def run(workdir, *, quick: bool = False, overrides: dict | None = None) -> dict:
  """Runs every step not yet done, then writes the report; returns `study.json`'s dict."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  record_path = workdir / 'study.json'
  record = json.loads(record_path.read_text()) if record_path.exists() else {'steps': {}}
  record['quick'] = quick
  for name, rel, fn in steps(quick=quick, overrides=overrides):
    if (workdir / rel / 'results.json').exists():
      logging.info('study: %s done already (%s)', name, workdir / rel)
      continue
    logging.info('study: %s -> %s', name, workdir / rel)
    tick = time.time()
    fn(workdir / rel)
    record['steps'][name] = {'workdir': rel, 'wall_clock_s': time.time() - tick}
    record_path.write_text(json.dumps(record, indent=2))
  tick = time.time()
  report.write(workdir)
  record['report_s'] = time.time() - tick
  record['total_wall_clock_s'] = sum(s['wall_clock_s'] for s in record['steps'].values())
  record_path.write_text(json.dumps(record, indent=2))
  logging.info('study: report in %s (steps took %.0f s in all)', workdir / 'report.md',
               record['total_wall_clock_s'])
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  progress.plain_logs()
  overrides = {k: getattr(flags.FLAGS, k) for k in ('data_dir', 'tfds_dir')
               if getattr(flags.FLAGS, k)}
  try:
    run(flags.FLAGS.workdir, quick=flags.FLAGS.quick, overrides=overrides)
  except train.TrainingInterrupted as e:
    print(f'charjax: {e}', file=sys.stderr)
    sys.exit(128 + int(e.signum))
  except (configuration.ConfigError, baseline.BaselineConfigError, runs.RunError,
          sources.DataNotFoundError, archives.ArchiveError, checkpointing.CheckpointError,
          train.TrainingDiverged) as e:
    sys.exit(f'charjax: {e}')



def define_flags():
  """The command's flags (defined by `python -m charjax.study`, not on import)."""
  flags.DEFINE_string('workdir', None, 'Directory of the whole study.')
  flags.DEFINE_bool('quick', False, 'Smoke run: 2 epochs per network, small SVC grids.')
  flags.DEFINE_string('data_dir', '', 'Folder holding the archives (default: search).')
  flags.DEFINE_string('tfds_dir', '', 'Folder for prepared datasets (default: TFDS default).')
  flags.mark_flags_as_required(['workdir'])
