"""Experiment 1: PCA (24 components) + RBF SVC per subset, the study's baseline.

  python -m charjax.baseline --config configs/pca_svc.py --config.subset=numerals \
      --workdir runs/pca_svc/numerals
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = 'nhcd'
  config.subset = 'numerals'          # numerals | vowels | consonants
  config.data_dir = ''
  config.tfds_dir = ''
  config.image_size = 36              # the study flattens its 36x36 images
  # The CNN experiments' split (same test images as experiments 2 and 3).
  config.split = 'stratified'
  config.test_fraction = 0.15
  config.val_fraction = 0.176
  config.split_seed = 1
  # The study's own protocol: train_test_split's default 25% test (seeded here).
  config.study_test_fraction = 0.25
  config.pca_components = 24
  config.pca_saved_components = 48    # kept for the report's reconstructions (1..48)
  config.svc_C = (1.0, 10.0, 100.0)
  config.svc_gamma = (0.001, 0.005, 0.01)
  config.cv_folds = 5
  config.seed = 0
  return config
