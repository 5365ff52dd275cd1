"""Experiment 2 on the NHCD consonants (study: 85.9% test accuracy).

  python -m charjax.train --config configs/consonants.py --workdir runs/consonants
"""

from configs import default


def get_config():
  config = default.get_config()
  config.subset = 'consonants'
  return config
