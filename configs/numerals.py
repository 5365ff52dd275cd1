"""Experiment 2 on the NHCD numerals (study: 97.9% test accuracy).

  python -m charjax.train --config configs/numerals.py --workdir runs/numerals
"""

from configs import default


def get_config():
  config = default.get_config()
  config.subset = 'numerals'
  return config
