"""Experiment 2 on the NHCD numerals (10 classes): the study's CNN, trained from scratch.

  python -m charjax.train --config numerals --workdir runs/numerals

Runtime on this project's 2-core CPU: 2.8 min (171 s in the study run of code 87b0442;
216 s with code 23fcf27). Test accuracy: 98.4% (87b0442), 98.1% (23fcf27); study: 97.9%.
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.subset = 'numerals'
  return configs.with_variant(config, variant)
