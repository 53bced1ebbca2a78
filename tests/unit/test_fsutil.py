"""streamd.fsutil: atomic replacement of whole files, on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from streamd.fsutil import atomic_file, atomic_path, atomic_write, fsync_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_content_and_a_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "token"
    atomic_write(str(path), b"secret\n")
    assert path.read_bytes() == b"secret\n"
    assert _mode(path) == 0o600
    assert os.listdir(tmp_path) == ["token"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o666])
def test_the_given_mode_less_the_umask(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "file"
    atomic_write(str(path), b"x", mode=mode)
    assert _mode(path) == mode & ~_umask()


def test_the_content_is_replaced_by_a_rename_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_bytes(b"old content")
    with path.open("rb") as reader:  # a reader that opened the old file keeps it whole
        before = path.stat().st_ino
        atomic_write(str(path), b"new")
        assert reader.read() == b"old content"
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != before
    assert os.listdir(tmp_path) == ["summary.json"]


def test_an_error_in_the_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"complete\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_file(str(path), mode=0o666) as f:
            f.write(b"half of it")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"complete\n"
    assert os.listdir(tmp_path) == ["export.jsonl"]


def test_a_failed_rename_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        atomic_write(str(target), b"data")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert os.listdir(target) == ["inside"]


def test_a_directory_that_refuses_files_raises_and_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError):
            atomic_write(str(locked / "key"), b"k")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


def test_atomic_path_hands_a_name_and_renames_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "backup.db"
    with atomic_path(str(dest)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.getsize(tmp) == 0
        assert _mode(Path(tmp)) == 0o600
        Path(tmp).write_bytes(b"copy")
    assert dest.read_bytes() == b"copy"
    assert os.listdir(tmp_path) == ["backup.db"]


def test_atomic_path_removes_its_file_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "backup.db"
    with pytest.raises(ValueError, match="did not verify"):
        with atomic_path(str(dest)) as tmp:
            Path(tmp).write_bytes(b"bad copy")
            raise ValueError("did not verify")
    assert os.listdir(tmp_path) == []


def test_no_fsync_is_still_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "f.gz"
    path.write_bytes(b"old")
    atomic_write(str(path), b"new", fsync=False)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.gz"]


def test_fsync_dir_on_a_real_directory(tmp_path: Path) -> None:
    fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fsync_dir(str(tmp_path / "missing"))
