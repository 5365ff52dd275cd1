"""Another dataset's images of the same characters, mixed into a run's training epochs.

DHCD's 36 consonants and 10 digits are NHCD's consonants and numerals, written by other
people and scanned another way. Fine-tuning from a DHCD-pretrained network uses them once,
before the run; `config.mix_in = 'dhcd'` keeps them in the run itself: each epoch trains on
the run's own training split plus `config.mix_in_per_epoch` times as many images drawn
afresh (without replacement) from the other dataset's publisher training split, restricted
to the run's classes, which are matched by class name ('ka (क)'), labelled with the run's
label numbers and preprocessed with the other dataset's ink polarity. Validation and test
are the run's own and untouched, so validation still selects the epoch and test measures
the run's dataset alone.

The draw is made on the device from the run's seed and the epoch number, so a resumed run
trains on the same images as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from charjax import configuration
from charjax.data import input_pipeline


@dataclasses.dataclass
class MixIn:
  """The other dataset's images of the run's classes, and how many join each epoch."""
  images: np.ndarray   # float32 (N, S, S, 1) model inputs
  labels: np.ndarray   # int32 (N,), the run's label numbers
  per_epoch: int
  record: dict         # what results.json says about it


def load(config, class_names: list[str], num_train: int) -> MixIn | None:
  """The images `config.mix_in` adds to training (None when it is ''); `ConfigError` when
  none of that dataset's classes is one of the run's `class_names`."""
  if not config.mix_in:
    return None
  examples, keep, images, labels = input_pipeline.load_run_classes(
      config.mix_in, 'all', 'train', class_names, image_size=config.image_size,
      data_dir=config.data_dir or None, tfds_dir=config.tfds_dir or None)
  if not keep.any():
    raise configuration.ConfigError(
        f'mix_in={config.mix_in!r}: none of its classes ({", ".join(examples.class_names[:5])}, '
        f'...) is one of this run\'s ({config.dataset}/{config.subset}: '
        f'{", ".join(class_names[:5])}, ...); classes are matched by name.')
  per_epoch = min(int(round(config.mix_in_per_epoch * num_train)), len(labels))
  if per_epoch < 1:
    raise configuration.ConfigError(
        f'mix_in_per_epoch={config.mix_in_per_epoch} draws no image per epoch '
        f'(training split: {num_train} images).')
  matched = set(labels.tolist())
  record = {
      'dataset': config.mix_in, 'split': 'train (the publisher\'s)',
      'images': int(len(labels)), 'per_epoch': per_epoch,
      'classes_matched': [n for k, n in enumerate(class_names) if k in matched],
      'classes_without': [n for k, n in enumerate(class_names) if k not in matched],
  }
  return MixIn(images, labels, per_epoch, record)


@functools.partial(jax.jit, static_argnames=('per_epoch',))
def epoch_training_set(images, labels, extra_images, extra_labels, rng, epoch, *,
                       per_epoch: int):
  """The run's training images followed by `per_epoch` of the extra ones, drawn without
  replacement from `fold_in(rng, epoch)` (the epoch's shuffle mixes them afterwards)."""
  pick = jax.random.permutation(jax.random.fold_in(rng, epoch), extra_images.shape[0])
  pick = pick[:per_epoch]
  return (jnp.concatenate([images, extra_images[pick]]),
          jnp.concatenate([labels, extra_labels[pick]]))
