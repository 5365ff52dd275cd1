"""The recipe's network pretrained on DHCD (46 classes: NHCD's 36 consonants and 10 digits).

DHCD holds about 54,800 training images of the same characters (after the carved
validation and test splits when the archive has only Train/), by other writers; the
recipe's ResNet learns them at NHCD's 36x36 input, then `recipe_from_dhcd` fine-tunes it on
an NHCD subset. Same recipe as `recipe` (AdamW, warm-up + cosine, label smoothing, shifts,
parameter average), fewer epochs: the set is ten times the consonants'.

  python -m charjax.train --config recipe_pretrain --workdir runs/recipe_pretrain

Runtime on this project's 2-core CPU: 18.8 min of training and validation. Test accuracy
(seed 0, test split carved from DHCD's Train/): 98.60%. Details: docs/recipe.md.
"""

from charjax import configs
from charjax.configs import recipe


def get_config(variant: str = ''):
  config = recipe.get_config()
  config.dataset = 'dhcd'
  config.subset = 'all'
  config.num_epochs = 8
  config.checkpoint_every_epochs = 1
  config.eval_batch_size = 2000
  return configs.with_variant(config, variant)
