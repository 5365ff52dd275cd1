"""Beyond the study: a residual network and a modern recipe, on the NHCD consonants.

The recipe's parts, each a config field (see docs/recipe.md for what each one is worth on
validation): `ResNet` (charjax/nn/resnet.py: three stages of residual blocks with
GroupNorm, 'SAME' convolutions on charjax's kernels), AdamW with a linear warm-up and a
cosine decay, batch 128, label smoothing 0.1, rotation, zoom and shifts drawn per image on
the device, and an exponential moving average of the parameters, which the run is
evaluated and checkpointed for use with. Model selection stays the study's: the epoch of
lowest validation loss.

  python -m charjax.train --config recipe --workdir runs/recipe_consonants
  python -m charjax.train --config recipe --config.subset=vowels --workdir runs/recipe_vowels
  python -m charjax.seeds --config recipe --num_seeds 3 --workdir runs/recipe_consonants_x3
  python -m charjax.train --config recipe:cnn --workdir runs/recipe_cnn   # the study's CNN

The variant `cnn` trains experiment 2's network (`SubsetCNN`) with the recipe, to
separate what the network brings from what the training brings; `wide` the ResNet with
stages of 48, 96 and 192 channels instead of 32, 64 and 128 (`recipe_pretrain:wide`,
`recipe_from_dhcd:wide`); `sgd` SGD with Nesterov momentum 0.9, peak rate 0.1 and
PyTorch's coupled weight decay 5e-4 instead of AdamW. Parts combine with a comma:
`recipe_pretrain:wide,sgd`, `recipe:wide,sgd,quick`.

Runtime on this project's 2-core CPU: 12.3 min of training and validation (consonants,
40 epochs). Test accuracy over 3 seeds: consonants 90.30 ± 0.87%, numerals 97.84 ± 0.35%,
vowels 93.22 ± 1.99% (study's exp. 2: 85.9 / 97.9 / 93.5). Details: docs/recipe.md.
"""

import ml_collections

from charjax import configs
from charjax.configs import default


NETWORKS = {
    '': dict(name='ResNet', stage_features=(32, 64, 128), blocks_per_stage=1, groups=8,
             dropout=0.3),
    'cnn': dict(name='SubsetCNN', conv_features=(32, 64), dense_features=256,
                conv_dropout=0.25, dense_dropout=0.8),
    # The ResNet half as wide again (2.2x the parameters and about twice the time per image).
    'wide': dict(name='ResNet', stage_features=(48, 96, 192), blocks_per_stage=1, groups=8,
                 dropout=0.3),
}


OPTIMIZERS = {
    'adamw': dict(name='adamw', learning_rate=2e-3, schedule='cosine', warmup_epochs=2.0,
                  weight_decay=5e-4, ema_decay=0.99),
    'sgd': dict(name='sgd', learning_rate=0.1, momentum=0.9, nesterov=True, schedule='cosine',
                warmup_epochs=2.0, weight_decay=5e-4, ema_decay=0.99),
}


def split_variant(variant: str) -> tuple[str, str, str]:
  """(network, optimiser, the rest) of a variant such as `'wide,sgd,quick'`.

  The network is a key of `NETWORKS` ('' by default), the optimiser one of `OPTIMIZERS`
  ('adamw' by default); the rest (at most one part) goes to `configs.with_variant`.
  """
  parts = [part for part in (variant or '').split(',') if part]
  networks = [part for part in parts if part in NETWORKS]
  optimizers = [part for part in parts if part in OPTIMIZERS]
  rest = [part for part in parts if part not in NETWORKS and part not in OPTIMIZERS]
  if len(networks) > 1 or len(optimizers) > 1 or len(rest) > 1:
    raise ValueError(f'config variant {variant!r} names more than one network, optimiser or '
                     f'other variant; networks: {", ".join(n for n in NETWORKS if n)}; '
                     f'optimisers: {", ".join(OPTIMIZERS)}')
  return (networks or [''])[0], (optimizers or ['adamw'])[0], (rest or [''])[0]


def get_config(variant: str = ''):
  network, optimizer, rest = split_variant(variant)
  return configs.with_variant(base_config(network, optimizer), rest)


def base_config(network: str = '', optimizer: str = 'adamw') -> ml_collections.ConfigDict:
  """The recipe with `NETWORKS[network]` and `OPTIMIZERS[optimizer]`, before any variant
  such as 'quick' (the DHCD configs build on it, then apply theirs)."""
  config = default.get_config()
  config.subset = 'consonants'
  config.model = ml_collections.ConfigDict(NETWORKS[network])
  config.optimizer = ml_collections.ConfigDict(OPTIMIZERS[optimizer])
  config.batch_size = 128
  config.num_epochs = 40
  config.checkpoint_every_epochs = 5
  config.label_smoothing = 0.1
  config.augment = True
  config.augment_rotation_degrees = 10.0
  config.augment_zoom = 0.1
  config.augment_translate = 0.08
  return config
