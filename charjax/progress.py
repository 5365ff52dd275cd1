"""What a person watching a run sees, and what TensorBoard reads.

- `EpochBar`: a progress bar over an epoch's steps, on an interactive terminal only. The
  epoch is one compiled loop; when the bar is on, each step reports its number through a
  `jax.debug.callback` (`tick`), which the compiled program carries only then (benchmarks,
  CI and log files run the program without it).
- `epoch_line`: the one-line summary of an epoch.
- `Summaries`: TensorBoard event files in `<workdir>/tensorboard` (tensorboardX; no
  TensorFlow): losses, accuracies, learning rate and images/s per epoch.
- `plain_logs`: log lines without absl's prefixes or libraries' chatter, for the commands.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import threading

from absl import logging as absl_logging
import tqdm

TENSORBOARD_DIR = 'tensorboard'

_active = None  # the EpochBar that `tick` advances
_lock = threading.Lock()


def interactive() -> bool:
  """Whether stderr is a terminal a person watches (not CI, not a file)."""
  return sys.stderr.isatty()


def tick(step) -> None:
  """Host side of the per-step callback: moves the active bar to the run's `step`."""
  with _lock:
    if _active is not None:
      _active.reach(int(step))


class EpochBar:
  """A transient bar over steps `first_step + 1 .. first_step + steps` of one epoch."""

  def __init__(self, epoch: int, num_epochs: int, first_step: int, steps: int):
    self._first = first_step
    self._bar = tqdm.tqdm(total=steps, desc=f'epoch {epoch}/{num_epochs}', unit='step',
                          leave=False, file=sys.stderr, dynamic_ncols=True)

  def reach(self, step: int) -> None:
    done = step - self._first + 1  # the callback reports the step's 0-based number
    if done > self._bar.n:  # with several devices each may report the same step
      self._bar.update(done - self._bar.n)

  def __enter__(self):
    global _active
    with _lock:
      _active = self
    return self

  def __exit__(self, *exc):
    global _active
    with _lock:
      _active = None
    self._bar.close()


def epoch_line(record: dict, num_epochs: int) -> str:
  """'epoch  3/180  loss 0.4123 acc 87.31%  val 0.5012 85.10%  lr 5.0e-04  2,345 img/s  best'."""
  width = len(str(num_epochs))
  return (f'epoch {record["epoch"]:>{width}}/{num_epochs}  '
          f'loss {record["train_loss"]:.4f} acc {100 * record["train_accuracy"]:.2f}%  '
          f'val {record["val_loss"]:.4f} {100 * record["val_accuracy"]:.2f}%  '
          f'lr {record["learning_rate"]:.1e}  {record["images_per_s"]:,.0f} img/s'
          + ('  best' if record['best'] else ''))


class Summaries:
  """TensorBoard scalars of a run; a resumed run drops events past its checkpoint."""

  TAGS = {'train_loss': 'loss/train', 'val_loss': 'loss/validation',
          'train_accuracy': 'accuracy/train', 'val_accuracy': 'accuracy/validation',
          'learning_rate': 'learning_rate', 'images_per_s': 'images_per_s'}

  def __init__(self, workdir: pathlib.Path, resumed_from_epoch: int, enabled: bool = True):
    self._writer = None
    if enabled:
      import tensorboardX  # pylint: disable=g-import-not-at-top  (only the writer needs it)
      self._writer = tensorboardX.SummaryWriter(
          str(pathlib.Path(workdir) / TENSORBOARD_DIR), purge_step=resumed_from_epoch + 1)

  def write(self, record: dict) -> None:
    if self._writer is None:
      return
    for key, tag in self.TAGS.items():
      self._writer.add_scalar(tag, record[key], record['epoch'])
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class PlainFormatter(logging.Formatter):
  """INFO lines as the bare message; warnings and errors prefixed with their level."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info:
      message += '\n' + self.formatException(record.exc_info)
    if record.levelno >= logging.WARNING:
      return f'{record.levelname.lower()}: {message}'
    return message


# Orbax warns that a checkpoint folder is opened read-only: charjax's readers (predict,
# evaluate, export, transfer) open them so on purpose, to change nothing.
_EXPECTED_WARNINGS = ('Given directory is read only',)


def quiet_library_logs(record: logging.LogRecord) -> bool:
  """Keeps Orbax's and TFDS's INFO chatter out of the progress display, and Orbax's
  warning that a checkpoint is opened read-only (charjax's readers do so on purpose)."""
  noisy = ('orbax', 'tensorflow_datasets', 'jax/_src')
  if not any(n in record.pathname for n in noisy):
    return True
  if record.levelno <= logging.INFO:
    return False
  return not str(record.msg).startswith(_EXPECTED_WARNINGS)


def plain_logs() -> None:
  """For charjax's commands: absl's log lines without prefixes and library chatter."""
  handler = absl_logging.get_absl_handler().python_handler
  handler.addFilter(quiet_library_logs)
  handler.setFormatter(PlainFormatter())
