"""Experiment 1: PCA (24 components) + RBF SVC per subset, the study's baseline.

  python -m charjax.study.baseline --config pca_svc --config.subset=numerals \
      --workdir runs/pca_svc/numerals

Runtime on this project's 2-core CPU: 14 s / 16 s / 150 s (numerals / vowels /
consonants). Test accuracy: 98.1 / 93.0 / 78.9% (study: 96.9 / 87.9 / 75.0%).
Variant 'quick': one C, two gammas, 2 folds.
"""

import ml_collections


def get_config(variant: str = '') -> ml_collections.ConfigDict:
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
  if variant == 'quick':
    config.svc_C, config.svc_gamma, config.cv_folds = (10.0,), (0.005, 0.01), 2
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; the variants are '' and 'quick'.")
  return config
