"""The study's 2-D feature map: experiment 3's network with a 2-unit dense layer before the
classifier, whose activations `python -m charjax.report` scatter-plots per class.

  python -m charjax.train --config configs/feature_map.py --workdir runs/feature_map
"""

from configs import all_classes


def get_config():
  config = all_classes.get_config()
  config.bottleneck_features = 2
  config.num_epochs = 50
  return config
