"""What charjax's command-line entry points share: flag parsing and errors as one line.

A researcher's mistake (a config file that does not load, an unknown or repeated config
field, an impossible value, a workdir that cannot be written) ends in one
`charjax: ...` line on stderr and a non-zero exit status, never a traceback:

  if __name__ == '__main__':
    ... define flags ...
    cli.run(main)

and inside `main`, `cli.exit_on_error(fn, *args)` turns charjax's own errors and OS
errors into that line. Programming errors still raise with their traceback.
"""

from __future__ import annotations

import errno
import pathlib
import sys

from absl import app
from absl import flags

from charjax.data import archives
from charjax import checkpointing
from charjax import configs
from charjax import configuration
from charjax.runtime import cpu_settings
from charjax.data import sources


def repeated_overrides(argv: list[str]) -> list[str]:
  """Config fields overridden more than once (`--config.x=1 ... --config.x=2`)."""
  seen, repeated = set(), []
  for arg in argv[1:]:
    if arg == '--':
      break
    if arg.startswith('--config.'):
      name = arg[len('--config.'):].split('=', 1)[0]
      if name in seen and name not in repeated:
        repeated.append(name)
      seen.add(name)
  return repeated


def _config_file(argv: list[str]) -> str | None:
  """The value of the last `--config` flag (`--config=F` or `--config F`), if any."""
  found = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == '--':
      break
    if arg.startswith('--config='):
      found = arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      found = argv[i + 1]
  return found


def _unknown_fields(argv: list[str]) -> list[str]:
  names = [a[len('--config.'):].split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
  return sorted({n for n in names if n.split('.', 1)[0] not in configuration.FIELDS})


def resolve_config_names(argv: list[str]) -> list[str]:
  """`--config consonants[:variant]` -> the packaged file `charjax/configs/consonants.py`.

  A value that is an existing file is kept; so is anything that names no packaged config
  (then the file's absence is reported).
  """
  out = list(argv)
  for i, arg in enumerate(out[1:], 1):
    if arg == '--':
      break
    if arg.startswith('--config='):
      prefix, value = '--config=', arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(out):
      prefix, value, i = '', out[i + 1], i + 1
    else:
      continue
    name, sep, variant = value.partition(':')
    packaged = configs.path_of(name)
    if packaged is not None and not pathlib.Path(name).is_file():
      out[i] = f'{prefix}{packaged}{sep}{variant}'
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure as a `charjax:` line and exit status 2.

  A config field given twice is refused (absl would concatenate tuple values); a config
  file that is missing or does not load, an unknown field or an unparsable value are
  named.
  """
  argv = resolve_config_names(argv)
  config_file = _config_file(argv)
  if config_file is not None and not pathlib.Path(config_file.split(':', 1)[0]).is_file():
    _exit(f'config file {config_file.split(":", 1)[0]} does not exist (the packaged configs: '
          f'{", ".join(configs.names())}).', 2)
  repeated = repeated_overrides(argv)
  if repeated:
    _exit(f'--config.{repeated[0]} is given more than once; give each config field once.', 2)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(f'{str(e).strip()} (--help lists the flags)', 2)
  except Exception as e:  # a config file that raises while loading, an unknown field, ...
    unknown = _unknown_fields(argv)
    if unknown:
      _exit(f'unknown config field {", ".join(unknown)}; the fields are: '
            f'{", ".join(sorted(configuration.FIELDS))}.', 2)
    if isinstance(e, (KeyError, AttributeError)) and 'model.' in ' '.join(argv):
      _exit(f'cannot load the config: {type(e).__name__}: {e} (config.model holds the '
            "fields of the model's module; to set one the config does not list, add it to "
            'the config file)', 2)
    _exit(f'cannot load the config: {type(e).__name__}: {e}', 2)


def run(main) -> None:
  """`absl.app.run(main)` with `parse_flags`, after `cpu_settings.apply()`.

  The process-wide CPU settings are an entry point's to make (never an import's): they are
  applied here, before JAX starts, and only when the process computes on CPU.
  """
  cpu_settings.apply()
  app.run(main, flags_parser=parse_flags)


# charjax's errors: each carries a message written for the user.
ERRORS = (configuration.ConfigError, sources.DataNotFoundError, archives.ArchiveError,
          checkpointing.CheckpointError)


def _exit(message: str, status: int = 1):
  print(f'charjax: {message}', file=sys.stderr)
  sys.exit(status)


def describe_os_error(e: OSError) -> str:
  """'No space left on device: /path' and a hint, for an OSError from reading or writing."""
  where = f': {e.filename}' if e.filename else ''
  text = f'{e.strerror or e}{where}'
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    text += ' (the disk is full; checkpoints saved before are intact: free space and rerun)'
  elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    text += ' (no permission to write there, or a read-only file system)'
  return text


def exit_on_error(fn, *args, errors: tuple = (), **kwargs):
  """Calls `fn`; charjax's errors (and `errors`) and OS errors end the process with one line."""
  try:
    return fn(*args, **kwargs)
  except ERRORS + tuple(errors) as e:
    _exit(str(e))
  except OSError as e:
    _exit(describe_os_error(e))
