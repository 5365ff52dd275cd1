"""Experiment 2 on the NHCD consonants (36 classes): the study's CNN, trained from scratch.

  python -m charjax.train --config consonants --workdir runs/consonants

Runtime on this project's 2-core CPU: 8.5 min (507 s, in the study run of code 23fcf27). Test accuracy: 88.2% (study: 85.9%).
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.subset = 'consonants'
  return configs.with_variant(config, variant)
