"""Experiment 2's CNN on DHCD (46 classes, 32x32, 78,200 training images), at native size.

  python -m charjax.train --config dhcd --workdir runs/dhcd

Runtime and accuracy of the 30 epochs: not measured yet on this CPU (3 epochs reached
87.1% on the carved test split).
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.dataset = 'dhcd'
  config.subset = 'all'
  config.image_size = 32
  config.num_epochs = 30
  return configs.with_variant(config, variant)
