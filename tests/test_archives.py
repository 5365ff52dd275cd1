"""Hostile archives are refused: zip-slip paths, absolute paths, symlinks and hard links."""

import io
import os
import tarfile
import zipfile

import pytest

from charjax.data import archives


def _zip(path, entries):
  with zipfile.ZipFile(path, 'w') as zf:
    for name, data, mode in entries:
      info = zipfile.ZipInfo(name)
      if mode:
        info.external_attr = mode << 16
      zf.writestr(info, data)
  return path


def _tar(path, members):
  with tarfile.open(path, 'w:gz') as tf:
    for name, kind, data in members:
      info = tarfile.TarInfo(name)
      if kind == 'file':
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
      else:
        info.type = tarfile.SYMTYPE if kind == 'sym' else tarfile.LNKTYPE
        info.linkname = data
        tf.addfile(info)
  return path


@pytest.mark.parametrize('name', ['../evil.png', 'a/../../evil.png', '/etc/passwd',
                                  'C:/Windows/evil.png', '..\\evil.png'])
def test_zip_entries_escaping_the_archive_are_refused(tmp_path, name):
  path = _zip(tmp_path / 'x.zip', [('ok/a.png', b'1', 0), (name, b'2', 0)])
  for read in (archives.list_files, lambda p: list(archives.iter_files(p))):
    with pytest.raises(archives.ArchiveError, match='outside the archive'):
      read(path)


def test_zip_symlink_entry_is_refused(tmp_path):
  path = _zip(tmp_path / 'x.zip', [('ok/a.png', b'1', 0), ('ok/link', b'/etc/passwd', 0o120777)])
  with pytest.raises(archives.ArchiveError, match='link entry'):
    archives.list_files(path)
  with pytest.raises(archives.ArchiveError, match='link entry'):
    list(archives.iter_files(path))


@pytest.mark.parametrize('kind', ['sym', 'hard'])
def test_tar_link_entries_are_refused(tmp_path, kind):
  path = _tar(tmp_path / 'x.tar.gz', [('ok/a.png', 'file', b'1'), ('ok/b.png', kind, '/etc/passwd')])
  with pytest.raises(archives.ArchiveError, match='link entry'):
    archives.list_files(path)
  with pytest.raises(archives.ArchiveError, match='link entry'):
    list(archives.iter_files(path))


def test_tar_path_traversal_is_refused(tmp_path):
  path = _tar(tmp_path / 'x.tar.gz', [('../../evil.png', 'file', b'1')])
  with pytest.raises(archives.ArchiveError, match='outside the archive'):
    list(archives.iter_files(path))


def test_symlink_inside_a_data_folder_is_refused(tmp_path):
  (tmp_path / 'data' / 'a').mkdir(parents=True)
  (tmp_path / 'data' / 'a' / 'x.png').write_bytes(b'1')
  os.symlink('/etc/passwd', tmp_path / 'data' / 'a' / 'y.png')
  with pytest.raises(archives.ArchiveError, match='link entry'):
    archives.list_files(tmp_path / 'data')


def test_plain_archive_is_read_and_nothing_is_written(tmp_path):
  path = _zip(tmp_path / 'x.zip', [('root/a.png', b'1', 0), ('__MACOSX/._a.png', b'', 0)])
  before = set(tmp_path.rglob('*'))
  assert archives.list_files(path) == ['root/a.png']
  assert list(archives.iter_files(path)) == [('root/a.png', b'1')]
  assert set(tmp_path.rglob('*')) == before


def _bomb_zip(path, bomb_name, bomb_bytes=200 << 20):
  """A zip of a few KB whose `bomb_name` entry inflates to `bomb_bytes` zeros."""
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    zf.writestr('nhcd/numerals/0/001_01.jpg', b'x' * 100)
    with zf.open(bomb_name, 'w', force_zip64=True) as entry:
      chunk = bytes(1 << 20)
      for _ in range(bomb_bytes >> 20):
        entry.write(chunk)
  return path


def test_entries_not_wanted_are_never_decompressed(tmp_path):
  import tracemalloc
  path = _bomb_zip(tmp_path / 'bomb.zip', 'nhcd/junk.bin')
  assert path.stat().st_size < 1 << 20
  tracemalloc.start()
  names = archives.list_files(path)
  got = dict(archives.iter_files(path, {'nhcd/numerals/0/001_01.jpg'}))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert names == ['nhcd/junk.bin', 'nhcd/numerals/0/001_01.jpg']
  assert got == {'nhcd/numerals/0/001_01.jpg': b'x' * 100}
  assert peak < 8 << 20  # the 200 MB entry was never inflated


def test_a_wanted_entry_over_the_size_limit_is_refused(tmp_path):
  import tracemalloc
  path = _bomb_zip(tmp_path / 'bomb.zip', 'nhcd/numerals/1/001_01.jpg')
  tracemalloc.start()
  with pytest.raises(archives.ArchiveError, match='more than the'):
    dict(archives.iter_files(path))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert peak < 8 << 20


def test_a_tar_entry_over_the_size_limit_is_refused_unread(tmp_path):
  path = _tar(tmp_path / 'x.tar.gz', [('a/small.png', 'file', b'1'),
                                      ('a/big.png', 'file', bytes(2 << 20))])
  assert dict(archives.iter_files(path, {'a/small.png'})) == {'a/small.png': b'1'}
  with pytest.raises(archives.ArchiveError, match="'a/big.png' holds 2097152 bytes"):
    dict(archives.iter_files(path, limit=1 << 20))


def test_duplicate_entry_names_are_refused(tmp_path):
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # zipfile warns about the duplicate name
    path = _zip(tmp_path / 'x.zip', [('a/1.png', b'1', 0), ('a/1.png', b'2', 0)])
  with pytest.raises(archives.ArchiveError, match="two entries named 'a/1.png'"):
    archives.list_files(path)
