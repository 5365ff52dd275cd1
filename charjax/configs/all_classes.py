"""Experiment 3: one CNN for all 58 NHCD classes, trained with on-device augmentation.

Its 512 features (after the second dense layer) feed the per-subset SVCs of
`charjax.study.specialise`. Study settings: RMSprop lr 1e-3, batch 400, 150 epochs,
rotation up to 15 degrees and zoom up to 20% on training batches only.

  python -m charjax.train --config all_classes --workdir runs/all_classes

Runtime on this project's 2-core CPU: 30 min (150 epochs, 823 images/s with augmentation;
in the study run of code 87b0442; 34 min with code 23fcf27). Test accuracy: 95.3% over the 58 classes; its features
under the SVCs: 99.8 / 98.5 / 94.4% on numerals / vowels / consonants (study: 99.7 / 99.5 /
94.9%).
"""

import ml_collections

from charjax import configs
from charjax.configs import default


def get_config(variant: str = ''):
  config = default.get_config()
  config.subset = 'all'
  config.model = ml_collections.ConfigDict(dict(
      name='AllClassesCNN', conv_features=(128, 64, 32), dense_features=512,
      conv_dropout=0.25, dense_dropout=0.7, bottleneck_features=0,
      bottleneck_activation='relu'))
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 400
  config.num_epochs = 150
  config.augment = True
  return configs.with_variant(config, variant)
