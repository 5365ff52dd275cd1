"""Experiment 2's CNN on DHCD (46 classes, 32x32, 78,200 training images), at native size.

  python -m charjax.train --config configs/dhcd.py --workdir runs/dhcd
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'dhcd'
  config.subset = 'all'
  config.image_size = 32
  config.num_epochs = 30
  return config
