"""The recipe on an NHCD subset, starting from the DHCD-pretrained ResNet (`recipe_pretrain`).

Every layer but the classifier starts from the pretraining run's best checkpoint (its
parameter average); the optimiser, schedule and epochs are `recipe`'s, so the gain over
training from scratch is this config against `recipe` on the same split.

  python -m charjax.train --config recipe_pretrain --workdir runs/recipe_pretrain
  python -m charjax.train --config recipe_from_dhcd --workdir runs/recipe_consonants_from_dhcd
  python -m charjax.train --config recipe_from_dhcd --config.subset=numerals --workdir runs/recipe_numerals_from_dhcd

Runtime on this project's 2-core CPU: about 10 min per consonant run (40 epochs), 3.5 min
for numerals or vowels. Test accuracy over 3 seeds (stratified split): consonants
95.39 ± 0.18%, numerals 99.92 ± 0.13%, vowels 99.16 ± 0.38%. Details: docs/recipe.md.
"""

from charjax import configs
from charjax.configs import recipe


def get_config(variant: str = ''):
  config = recipe.get_config()
  config.init_from = 'runs/recipe_pretrain'
  return configs.with_variant(config, variant)
