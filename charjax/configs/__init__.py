"""Experiment configs: `get_config(variant)` of each module returns a ConfigDict.

Select one by name or by path; a variant follows a colon:

  python -m charjax.train --config consonants --workdir runs/consonants
  python -m charjax.train --config consonants:quick --workdir runs/quick   # 2 epochs
  python -m charjax.train --config path/to/my_config.py --workdir runs/mine

`default` declares every run-wide field; the others import it (or a config derived from
it) and change a few. Variants: '' (the config as documented) and 'quick' (a smoke run:
2 epochs, a checkpoint each).
"""

from __future__ import annotations

import importlib
import pathlib

import ml_collections

VARIANTS = ('', 'quick')


def with_variant(config: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
  """`config` changed for `variant` (see the module docstring); raises on an unknown one."""
  variant = variant or ''
  if variant not in VARIANTS:
    raise ValueError(f'unknown config variant {variant!r}; the variants are '
                     f'{", ".join(repr(v) for v in VARIANTS)}.')
  if variant == 'quick':
    config.num_epochs = 2
    config.checkpoint_every_epochs = 1
  return config


def path_of(name: str) -> pathlib.Path | None:
  """The file of the packaged config `name` (e.g. 'consonants'), or None."""
  if not name.isidentifier() or name == '__init__':
    return None
  path = pathlib.Path(__file__).with_name(f'{name}.py')
  return path if path.is_file() else None


def names() -> list[str]:
  """The packaged configs' names."""
  return sorted(p.stem for p in pathlib.Path(__file__).parent.glob('*.py')
                if p.stem != '__init__')


def get(name: str) -> ml_collections.ConfigDict:
  """The packaged config `name`, with an optional variant: `get('consonants:quick')`."""
  base, _, variant = name.partition(':')
  if path_of(base) is None:
    raise ValueError(f'no packaged config {base!r}; the configs are {", ".join(names())}.')
  return importlib.import_module(f'{__name__}.{base}').get_config(variant)
