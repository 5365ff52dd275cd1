"""Experiment 3: one CNN for all 58 NHCD classes, trained with on-device augmentation.

Its 512 features (after the second dense layer) feed the per-subset SVCs of
`charjax.specialise`. Study settings: RMSprop lr 1e-3, batch 400, 150 epochs, rotation
up to 15 degrees and zoom up to 20% on training batches only.

  python -m charjax.train --config configs/all_classes.py --workdir runs/all_classes
"""

from configs import default


def get_config():
  config = default.get_config()
  config.subset = 'all'
  config.model = 'AllClassesCNN'
  config.conv_features = (128, 64, 32)
  config.dense_features = 512
  config.conv_dropout = 0.25
  config.dense_dropout = 0.7
  config.learning_rate = 1e-3
  config.batch_size = 400
  config.num_epochs = 150
  config.augment = True
  return config
