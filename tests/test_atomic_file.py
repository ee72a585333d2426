"""The local atomic write: replace, exclusive create, no temp file left behind."""
from __future__ import annotations

import pytest

from preprocess.atomic_file import atomic_write


def test_replace_and_exclusive_create(tmp_path):
    path = tmp_path / "sub" / "a.json"
    assert atomic_write(path, lambda p: p.write_text("one")) == path
    atomic_write(path, lambda p: p.write_text("two"))
    assert path.read_text() == "two"
    with pytest.raises(FileExistsError):
        atomic_write(path, lambda p: p.write_text("three"), exclusive=True)
    assert path.read_text() == "two"
    atomic_write(tmp_path / "sub" / "b.json", lambda p: p.write_text("new"), exclusive=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json", "b.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half(p):
        p.write_text("half")
        raise OSError("disk full (injected)")

    with pytest.raises(OSError, match="injected"):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
