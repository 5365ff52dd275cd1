"""Experiment 2 of the study (a CNN per character subset), on the NHCD consonants.

Every run-wide field charjax reads is declared here; the other configs import this one
and change a few fields. The study's settings: RMSprop (Keras's rule) lr 5e-4, batch 800,
180 epochs, the best-validation-loss epoch kept.

  python -m charjax.train --config default --workdir runs/default

Runtime on this project's 2-core CPU: 8.5 min (code 23fcf27). Test accuracy: 88.2%
(study: 85.9%).
"""

import ml_collections

from charjax import configs


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data: a dataset of charjax.data.registry by name, or the module path of your own.
  config.dataset = 'nhcd'            # 'nhcd' or 'dhcd'
  config.subset = 'consonants'       # nhcd: numerals | vowels | consonants | all
  config.data_dir = ''               # archives; '' = $CHARJAX_DATA_DIR, then defaults
  config.tfds_dir = ''               # prepared data; '' = $CHARJAX_TFDS_DIR or ~/tensorflow_datasets
  config.image_size = 36             # the study's input (our copy of NHCD is 28x28)
  config.split = 'stratified'        # 'stratified' (the study's) or 'writer' (writer-disjoint)
  # Test split: 'auto' = the publisher's (DHCD's Test/) where the data have one, else
  # carved; 'official'; 'carved' = test_fraction held out of the training split (the study's).
  config.test_split = 'auto'
  config.test_fraction = 0.15
  config.val_fraction = 0.176
  config.split_seed = 1
  # True: train on the training and validation splits together and keep the last epoch
  # (once the epochs are chosen on validation); validation then selects nothing.
  config.train_on_validation = False
  # Model: `name` in charjax.nn.models (or a module path); the other fields go to the module.
  config.model = ml_collections.ConfigDict(dict(
      name='SubsetCNN', conv_features=(32, 64), dense_features=256, conv_dropout=0.25,
      dense_dropout=0.8))
  # How the convolutions compute: 'auto' ('native' on CPU where it builds, else 'xla'),
  # 'xla', 'patches' or 'native' (see charjax.nn.conv).
  config.conv_impl = 'auto'
  # 'float32' (the study's) or 'bfloat16': activations and products in bfloat16, parameters,
  # optimizer state and loss in float32 (for GPUs and TPUs; on CPU it uses XLA's convolution).
  config.dtype = 'float32'
  # Optimiser: `name` in charjax.optim.OPTIMIZERS; the schedule's fields, then its own.
  config.optimizer = ml_collections.ConfigDict(dict(
      name='keras_rmsprop', learning_rate=5e-4, schedule='constant', warmup_epochs=0.0,
      rho=0.9, epsilon=1e-8))
  config.batch_size = 800
  config.eval_batch_size = 1000
  config.num_epochs = 180
  config.seed = 0
  config.checkpoint_every_epochs = 10
  # A finished run to start from (fine-tuning): its parameters where they fit, all but the
  # output layer (charjax.transfer); '' = a fresh initialisation.
  config.init_from = ''
  # Devices of the data-parallel mesh (0: every device JAX sees); each batch is split over
  # them. It may change when a run is resumed.
  config.num_devices = 0
  # On-device augmentation of training batches (experiment 3 turns it on).
  config.augment = False
  config.augment_rotation_degrees = 15.0  # angle drawn in [-r, r] per image
  config.augment_zoom = 0.2               # scale drawn in [1 - z, 1 + z] per image
  config.augment_translate = 0.0          # shift drawn in [-t, t] x image size, per axis
  config.augment_erase = 0.0              # probability of erasing a rectangle per image
  config.augment_elastic_alpha = 0.0      # elastic distortion's size in pixels (0: off)
  config.augment_elastic_sigma = 4.0      # and its smoothness (Gaussian sigma, pixels)
  # Images mixed in pairs within each batch, targets weighted alike: '' (off), 'mixup' or
  # 'cutmix'; the weight drawn from Beta(alpha, alpha) for a fraction `probability` of them.
  config.augment_mix = ''
  config.augment_mix_alpha = 1.0
  config.augment_mix_probability = 1.0
  # Training targets (1 - e) * one_hot + e / classes; 0 = the study's plain cross-entropy.
  config.label_smoothing = 0.0
  # Another dataset of the same characters mixed into every training epoch (e.g. 'dhcd' for
  # NHCD's consonants or numerals; charjax.data.mix_in): its images of this run's classes,
  # mix_in_per_epoch x the training split's size drawn afresh each epoch. '' = none.
  config.mix_in = ''
  config.mix_in_per_epoch = 1.0
  return configs.with_variant(config, variant)
