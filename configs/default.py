"""Experiment 2 of the study: a CNN per subset (here the consonants) with its settings.

Every field charjax reads is declared here; the other configs import this one and
override a few fields.

  python -m charjax.train --config configs/default.py --workdir runs/default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = 'nhcd'            # 'nhcd' or 'dhcd'
  config.subset = 'consonants'       # nhcd: numerals | vowels | consonants | all
  config.data_dir = ''               # archives; '' = $CHARJAX_DATA_DIR, then defaults
  config.tfds_dir = ''               # prepared data; '' = $CHARJAX_TFDS_DIR or ~/tensorflow_datasets
  config.image_size = 36             # the study's input (our copy of NHCD is 28x28)
  config.split = 'stratified'        # 'stratified' (the study's) or 'writer' (writer-disjoint)
  config.test_fraction = 0.15
  config.val_fraction = 0.176
  config.split_seed = 1
  # Model (a class in charjax.models).
  config.model = 'SubsetCNN'
  config.conv_features = (32, 64)
  config.dense_features = 256
  config.conv_dropout = 0.25
  config.dense_dropout = 0.8
  config.bottleneck_features = 0      # AllClassesCNN: >0 adds that narrow dense layer
  config.bottleneck_activation = 'relu'  # its activation: 'relu' or 'softplus'
  # 'auto' ('native' on CPU where it builds, else 'xla'), 'xla', 'patches' or 'native'.
  config.conv_impl = 'auto'          # see charjax.conv
  # 'float32' (the study's) or 'bfloat16': activations and products in bfloat16, parameters,
  # optimizer state and loss in float32 (for GPUs and TPUs; on CPU it uses XLA's convolution).
  config.dtype = 'float32'
  # Optimisation.
  config.learning_rate = 5e-4
  config.rmsprop_rho = 0.9
  config.rmsprop_epsilon = 1e-8
  config.batch_size = 800
  config.eval_batch_size = 1000
  config.num_epochs = 180
  config.seed = 0
  config.checkpoint_every_epochs = 10
  # Devices of the data-parallel mesh (0: every device JAX sees); each batch is split over
  # them. It may change when a run is resumed.
  config.num_devices = 0
  # On-device augmentation of training batches (experiment 3 turns it on).
  config.augment = False
  config.augment_rotation_degrees = 15.0  # angle drawn in [-r, r] per image
  config.augment_zoom = 0.2               # scale drawn in [1 - z, 1 + z] per image
  return config
