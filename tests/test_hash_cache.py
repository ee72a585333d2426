import hashlib
import json
import os
import time

import pytest

from preprocess.sources import base
from preprocess.sources.hash_cache import RACY_S, StatHashCache, active_cache, stat_hash_cache


def _old(path, seconds=3600):
    """Set the file's mtime in the past (beyond the racy window)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.ply", tmp_path / "b.json"
    a.write_bytes(b"\x00mesh" * 1000)
    b.write_text('{"frames": 3}')
    _old(a)
    _old(b)
    return [a, b]


def test_unchanged_files_are_not_read_again_and_digest_is_the_same(files, tmp_path, monkeypatch):
    plain = base.hash_files(files, extra="opts")
    cache_file = tmp_path / "store" / "cache" / "file_hashes.json"
    with stat_hash_cache(cache_file) as cache:
        assert active_cache() is cache
        assert base.hash_files(files, extra="opts") == plain
        assert (cache.hits, cache.misses) == (0, 1)
    assert active_cache() is None
    assert cache_file.is_file()

    def no_reading(*args, **kwargs):
        raise AssertionError("file bytes read although their stat did not change")

    monkeypatch.setattr(base, "_sha1_files", no_reading)
    with stat_hash_cache(cache_file) as cache:  # a new process would load the same file
        assert base.hash_files(files, extra="opts") == plain
        assert (cache.hits, cache.misses) == (1, 0)


def test_a_changed_file_or_option_is_hashed_again(files, tmp_path):
    cache_file = tmp_path / "cache.json"
    with stat_hash_cache(cache_file):
        first = base.hash_files(files, extra="opts")
    files[1].write_text('{"frames": 4}')  # same size, new mtime
    _old(files[1], 10)
    with stat_hash_cache(cache_file) as cache:
        second = base.hash_files(files, extra="opts")
        other = base.hash_files(files, extra="other opts")
        assert (cache.hits, cache.misses) == (0, 2)
    assert second == base.hash_files(files, extra="opts") != first
    assert other != second


def test_racy_entries_are_not_recorded(tmp_path):
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"just written")  # mtime = now: could change again within the same tick
    cache = StatHashCache(tmp_path / "cache.json")
    cache.digest([f], "", lambda: "d1")
    assert cache.misses == 1 and cache.digest([f], "", lambda: "d2") == "d2"
    assert RACY_S > 0


def _sha1_by_hand(paths, extra=""):
    """The content hash's definition: sha1 of extra, then each file's name and bytes."""
    h = hashlib.sha1(extra.encode())
    for p in paths:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_missing_file_still_raises_and_corrupt_cache_is_empty(files, tmp_path):
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{not json")
    missing = tmp_path / "missing.ply"
    with stat_hash_cache(cache_file) as cache:
        with pytest.raises(FileNotFoundError) as err:
            base.hash_files([files[0], missing], extra="opts")
        assert err.value.filename == str(missing)  # names the file, as open() would
        assert base.hash_files(files, extra="opts") == _sha1_by_hand(files, "opts")
        assert (cache.hits, cache.misses) == (0, 1)  # the corrupt file gave no entry; the missing one made none
    # the corrupt file was replaced by a readable cache holding the one good digest
    saved = json.loads(cache_file.read_text())
    assert list(saved["entries"].values()) == [_sha1_by_hand(files, "opts")]
