"""Experiment 2 on the NHCD vowels (study: 93.5% test accuracy).

  python -m charjax.train --config configs/vowels.py --workdir runs/vowels
"""

from configs import default


def get_config():
  config = default.get_config()
  config.subset = 'vowels'
  return config
