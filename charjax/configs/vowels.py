"""Experiment 2 on the NHCD vowels (12 classes): the study's CNN, trained from scratch.

  python -m charjax.train --config vowels --workdir runs/vowels

Runtime on this project's 2-core CPU: 2.4 min (146 s in the study run of code 87b0442;
188 s with code 23fcf27). Test accuracy: 96.0% (87b0442), 95.7% (23fcf27); study: 93.5%.
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.subset = 'vowels'
  return configs.with_variant(config, variant)
