"""The recipe on an NHCD subset, starting from the DHCD-pretrained ResNet (`recipe_pretrain`).

Every layer but the classifier starts from the pretraining run's best checkpoint (its
parameter average); the optimiser, schedule and epochs are `recipe`'s, so the gain over
training from scratch is this config against `recipe` on the same split.

  python -m charjax.train --config recipe_pretrain --workdir runs/recipe_pretrain
  python -m charjax.train --config recipe_from_dhcd --workdir runs/recipe_consonants_from_dhcd
  python -m charjax.train --config recipe_from_dhcd --config.subset=numerals --workdir runs/recipe_numerals_from_dhcd
  python -m charjax.train --config recipe_from_dhcd --config.subset=all --workdir runs/recipe_all_from_dhcd

Runtime on this project's 2-core CPU: about 10 min per consonant run (40 epochs; 16 min
for the 80 epochs chosen on validation for the consonants, `--config.num_epochs=80`), 3 min
for numerals or vowels. Test accuracy over 3 seeds (stratified split, after the 20-epoch
`recipe_pretrain`): consonants (80 epochs) 96.72 ± 0.19%, numerals 100.00 ± 0.00%, vowels
99.16 ± 0.15%. With elastic distortion, the seed-2 pretraining and
`--config.train_on_validation=True` (validation trained on too, the last epoch kept):
consonants 96.96 ± 0.19%, vowels 99.75 ± 0.00%. On all 58 classes (40 epochs, about 16
min, the seed-2 pretraining): 98.09 ± 0.05%; with elastic distortion and the study's SVCs
on its features (`charjax.study.specialise`), numerals / vowels / consonants 99.92 ± 0.13 /
100.00 ± 0.00 / 97.12 ± 0.24%. The `wide` variant (stages of 48/96/192 channels, from
`recipe_pretrain:wide`; about twice the time per image) on the consonants, 80 epochs with
elastic distortion: 97.62 ± 0.10%, about 30 min per seed; writer-disjoint
(`--config.split=writer`): 95.15 ± 0.33%; on all 58 classes (`--config.subset=all`, 40
epochs, elastic, 26-32 min per seed): 98.26 ± 0.12%, the SVCs on its features 100.00 ±
0.00 / 100.00 ± 0.00 / 97.48 ± 0.36%:

  python -m charjax.train --config recipe_pretrain:wide --workdir runs/recipe_pretrain_wide
  python -m charjax.seeds --config recipe_from_dhcd:wide --config.num_epochs=80 --config.augment_elastic_alpha=40 --config.augment_elastic_sigma=5 --num_seeds 3 --workdir runs/recipe_from_dhcd_wide_x3

Details: docs/recipe.md.
"""

from charjax import configs
from charjax.configs import recipe


def get_config(variant: str = ''):
  network, optimizer, variant = recipe.split_variant(variant)
  config = recipe.base_config(network, optimizer)
  # Where `recipe_pretrain` with the same network and optimiser trains by default.
  parts = [part for part in (network, optimizer) if part not in ('', 'adamw')]
  config.init_from = 'runs/recipe_pretrain' + ''.join(f'_{part}' for part in parts)
  return configs.with_variant(config, variant)
