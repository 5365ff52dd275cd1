"""Experiment 2 on the NHCD consonants (36 classes): the study's CNN, trained from scratch.

  python -m charjax.train --config consonants --workdir runs/consonants

Runtime on this project's 2-core CPU: 6.4 min (381 s in the study run of code 87b0442;
507 s with code 23fcf27). Test accuracy: 88.0% (87b0442), 88.2% (23fcf27); study: 85.9%.
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.subset = 'consonants'
  return configs.with_variant(config, variant)
