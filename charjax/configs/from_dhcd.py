"""Transfer: an NHCD subset fine-tuned from the DHCD-pretrained CNN (`dhcd_pretrain`).

Every layer but the output starts from the pretraining run's best checkpoint (the output
layer is fresh: the subset's classes); then the study's experiment-2 recipe. Consonants
and numerals are characters DHCD holds; vowels get its features too.

  python -m charjax.train --config dhcd_pretrain --workdir runs/dhcd_pretrain
  python -m charjax.train --config from_dhcd --workdir runs/consonants_from_dhcd
  python -m charjax.train --config from_dhcd --config.subset=vowels --workdir runs/vowels_from_dhcd

`--config.init_from` names another pretraining run. Runtime and accuracy on this
project's 2-core CPU: not measured yet; compare with the from-scratch `consonants`,
`numerals` and `vowels` configs (same split, same epochs).
"""

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.subset = 'consonants'
  config.init_from = 'runs/dhcd_pretrain'
  return configs.with_variant(config, variant)
