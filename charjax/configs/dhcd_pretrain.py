"""Pretraining for transfer: experiment 2's CNN on DHCD (46 classes), at NHCD's 36x36 input.

DHCD's 36 consonants and 10 digits are NHCD's characters, written by other writers;
its 78,200 training images (six times NHCD's) teach the convolutions first, and
`from_dhcd` then fine-tunes them on an NHCD subset. The input is upsampled to 36x36 so
that every layer but the output has the shape of the NHCD networks'.

  python -m charjax.train --config dhcd_pretrain --workdir runs/dhcd_pretrain

Runtime and accuracy on this project's 2-core CPU: not measured yet (10 epochs of about 54,800
training images; the carved test split when the archive holds only Train/).
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.dataset = 'dhcd'
  config.subset = 'all'
  config.image_size = 36
  config.num_epochs = 10
  return configs.with_variant(config, variant)
