"""Experiment 2 on the NHCD consonants (36 classes): the study's CNN, trained from scratch.

  python -m charjax.train --config consonants --workdir runs/consonants

Runtime on this project's 2-core CPU: 11.7 min (700 s, in the study run of code 76249ad). Test accuracy: 87.5% (study: 85.9%).
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.subset = 'consonants'
  return configs.with_variant(config, variant)
