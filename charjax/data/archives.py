"""Uniform, streaming access to the datasets' archives: zip, tar(.gz/.xz/.bz2) or a folder.

The readers never extract anything to disk: they yield `(path, bytes)` pairs for the
regular files inside, with paths normalised to forward slashes and relative to the
archive's root. Entries that could escape a target folder (absolute paths, '..') and link
entries (symlinks, hard links) make the whole archive refused with `ArchiveError`. Damaged archives raise `ArchiveError` with the archive's path in the
message instead of a low-level zip/tar/lzma exception.
"""

from __future__ import annotations

import lzma
import os
import pathlib
import tarfile
import zipfile
import zlib
from typing import Iterator

ARCHIVE_SUFFIXES = ('.zip', '.tar', '.tar.gz', '.tgz', '.tar.xz', '.txz', '.tar.bz2')
# The largest entry read into memory: far above any image of the datasets (NHCD's and
# DHCD's are a few KB), far below what a decompression bomb would need.
MAX_ENTRY_BYTES = 16 << 20


class ArchiveError(RuntimeError):
  """An archive is missing, truncated, corrupt or laid out differently than expected."""


def is_archive(path: os.PathLike | str) -> bool:
  """Whether `path` names a file with a supported archive suffix."""
  return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _normalise(name: str, archive=None) -> str | None:
  """The entry's relative path; None for metadata entries; ArchiveError for hostile ones.

  Absolute paths, drive letters and '..' components could point outside any target
  folder (zip-slip); they are refused, not skipped, so a tampered archive is noticed.
  """
  unix = name.replace('\\', '/')
  parts = [p for p in unix.split('/') if p not in ('', '.')]
  if unix.startswith('/') or '..' in parts or (parts and len(parts[0]) == 2
                                               and parts[0][1] == ':'):
    raise ArchiveError(f'Archive {archive} has an entry that points outside the archive '
                       f'({name!r}); refusing to read it.')
  if not parts or parts[-1].startswith('._') or '__MACOSX' in parts:
    return None
  return '/'.join(parts)


def _refuse_link(archive, name: str) -> None:
  raise ArchiveError(f'Archive {archive} has a link entry ({name!r}); links could point '
                     'anywhere on disk, so the archive is refused.')


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
  return (info.external_attr >> 16) & 0o170000 == 0o120000


def _damaged(path, err) -> ArchiveError:
  return ArchiveError(
      f'Archive {path} is truncated or corrupt ({type(err).__name__}: {err}). '
      'Download it again (see the README section "Data").')


def _too_large(archive, name: str, size: int | str, limit: int) -> ArchiveError:
  return ArchiveError(f'Archive {archive}: entry {name!r} holds {size} bytes, more than the '
                      f'{limit} bytes charjax reads from one entry; refusing it.')


def _read_limited(stream, archive, name: str, limit: int) -> bytes:
  """At most `limit` bytes of `stream`: sizes in headers can lie, the stream cannot."""
  data = stream.read(limit + 1)
  if len(data) > limit:
    raise _too_large(archive, name, f'over {limit}', limit)
  return data


def _entries(path: pathlib.Path, wanted, limit: int) -> Iterator[tuple[str, bytes | None]]:
  """(relative path, content or None) of each regular file of a zip or tar archive,
  refusing hostile entries and wrapping damage in `ArchiveError`. Only entries for which
  `wanted(name)` is true are read (decompressed), each up to `limit` bytes; without
  `wanted` nothing is read."""
  try:
    if str(path).lower().endswith('.zip'):
      with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
          name = _normalise(info.filename, path)
          if name and _zip_is_link(info):
            _refuse_link(path, info.filename)
          if not name or info.is_dir():
            continue
          if wanted is None or not wanted(name):
            yield name, None
            continue
          if info.file_size > limit:
            raise _too_large(path, name, info.file_size, limit)
          with zf.open(info) as stream:
            yield name, _read_limited(stream, path, name, limit)
    else:
      # Reading streams the archive; listing opens it whole, which notices truncation.
      with tarfile.open(path, mode='r|*' if wanted else 'r:*') as tf:
        for member in tf:
          name = _normalise(member.name, path)
          if name and (member.issym() or member.islnk()):
            _refuse_link(path, member.name)
          if not name or not member.isfile():
            continue
          if wanted is None or not wanted(name):
            yield name, None  # skipped by the stream, never held in memory
            continue
          if member.size > limit:
            raise _too_large(path, name, member.size, limit)
          yield name, _read_limited(tf.extractfile(member), path, name, limit)
  except (zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError, EOFError, zlib.error, OSError) as e:
    raise _damaged(path, e) from e


def _refuse_duplicates(path, names: list[str]) -> None:
  seen = set()
  for name in names:
    if name in seen:
      raise ArchiveError(f'Archive {path} holds two entries named {name!r}; which one is the '
                         'image is ambiguous, so the archive is refused.')
    seen.add(name)


def list_files(path: os.PathLike | str) -> list[str]:
  """Paths of the regular files in an archive or folder, sorted; nothing is decompressed.

  Refuses link entries and names that occur twice.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    links = [p for p in path.rglob('*') if p.is_symlink()]
    if links:
      _refuse_link(path, str(links[0].relative_to(path)))
    return sorted(p.relative_to(path).as_posix() for p in path.rglob('*') if p.is_file())
  names = [name for name, _ in _entries(path, None, MAX_ENTRY_BYTES)]
  _refuse_duplicates(path, names)
  return sorted(names)


def iter_files(path: os.PathLike | str, wanted=None,
               limit: int = MAX_ENTRY_BYTES) -> Iterator[tuple[str, bytes]]:
  """Yields `(relative_path, content)` for the regular files `wanted` (a set of names or a
  predicate; default all), streaming tar archives.

  Entries not wanted are never decompressed; a wanted entry larger than `limit` bytes
  raises `ArchiveError`, so memory stays bounded whatever the archive holds.
  """
  path = pathlib.Path(path)
  if wanted is None:
    want = lambda name: True
  elif callable(wanted):
    want = wanted
  else:
    want = wanted.__contains__
  if path.is_dir():
    for name in list_files(path):
      if want(name):
        size = (path / name).stat().st_size
        if size > limit:
          raise _too_large(path, name, size, limit)
        yield name, (path / name).read_bytes()
    return
  for name, data in _entries(path, want, limit):
    if data is not None:
      yield name, data


def find_root(names: list[str], marker: str) -> str:
  """The prefix ('' or 'a/b/') under which `marker` (a relative path) first occurs."""
  for name in names:
    if name == marker or name.startswith(marker + '/'):
      return ''
    idx = name.find('/' + marker + '/')
    if idx < 0 and name.endswith('/' + marker):
      idx = len(name) - len(marker) - 1
    if idx >= 0:
      return name[:idx + 1]
  raise KeyError(marker)
