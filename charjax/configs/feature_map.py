"""The study's 2-D feature map: experiment 3's network with a 2-unit dense layer before the
classifier, whose activations `python -m charjax.study.report` scatter-plots per class.

  python -m charjax.train --config feature_map --workdir runs/feature_map

Runtime on this project's 2-core CPU: 10 min (50 epochs, code 87b0442). Test accuracy:
27.4% over the 58 classes from 2 features (the study reports the plot, not an accuracy).
"""

from charjax import configs
from charjax.configs import all_classes


def get_config(variant: str = ''):
  config = all_classes.get_config()
  config.model.bottleneck_features = 2
  # With ReLU, both units died within four epochs (their activations 0 for every image, loss
  # stuck at ln 58): RMSprop's first updates are ~3x the learning rate for every weight, and
  # 512 of them moving together push a unit's input below zero for good. Softplus is
  # positive too (the map is drawn on log axes) and its gradient never vanishes exactly.
  config.model.bottleneck_activation = 'softplus'
  config.num_epochs = 50
  return configs.with_variant(config, variant)
