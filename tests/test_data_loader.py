"""Shard loader on real (small) Zarr stores: rank/worker split, resume, errors."""
import pytest
import torch

from concerto.data import DataError, ShardBatchSampler, ShardLoader, SampleSpec
from concerto.data.sampler import interleave_worker_batches
from concerto.config import MaskConfig, ViewConfig
from concerto.patches import PatchGrid
from pipelines.store import ShardStore, commit
from testkit.pretrain_store import write_store

SPEC = SampleSpec(views=ViewConfig(max_points=300, principal_max_points=300), mask=MaskConfig(),
                  grid=PatchGrid(56, 14), total_steps=100)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    # shards of 3 and 2 scenes; 2 scenes without images -> 3*2 + 1*2 + 2*1 = ... image groups
    return write_store(tmp_path_factory.mktemp("store") / "s", shard_sizes=(3, 2), n_points=800,
                       without_images=2)


def test_store_layout(store_url):
    store = ShardStore.open(store_url)
    assert len(store) == 8 and [len(s) for s in store.samples_by_shard()] == [6, 2]


def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(store_url):
    seen = []
    lengths = []
    for rank in range(2):
        loader = ShardLoader(store_url, SPEC, batch_size=1, rank=rank, world_size=2, num_workers=2, seed=3)
        lengths.append(len(loader))
        for batch in loader.epoch():
            seen += batch["sample_index"].tolist()
        assert (loader.state_dict()["epoch"], loader.state_dict()["consumed"]) == (1, 0)
    assert lengths[0] == lengths[1] == 4
    assert sorted(seen) == list(range(8))


def test_padding_gives_equal_rank_lengths():
    shards = [[0, 1, 2], [3, 4]]
    per_rank = []
    for rank in range(3):
        s = ShardBatchSampler(shards, batch_size=1, rank=rank, world_size=3, seed=0)
        per_rank.append([t.index for b in s for t in b])
    assert [len(p) for p in per_rank] == [2, 2, 2]
    flat = sum(per_rank, [])
    assert set(flat) == set(range(5)) and len(flat) == 6  # one sample repeated to pad


def test_order_depends_on_seed_and_epoch_only():
    shards = [list(range(0, 10)), list(range(10, 16)), list(range(16, 30))]
    a = ShardBatchSampler(shards, 2, seed=1)
    b = ShardBatchSampler(shards, 2, seed=1)
    order = lambda s: [t.index for batch in s for t in batch]  # noqa: E731
    assert order(a) == order(b)
    b.set_epoch(1)
    assert order(a) != order(b) and sorted(order(a)) == sorted(order(b))


def test_workers_read_contiguous_runs_of_shards():
    shards = [list(range(0, 8)), list(range(8, 16))]
    s = ShardBatchSampler(shards, batch_size=2, num_workers=2, seed=0)
    batches = s.batches()
    # DataLoader hands batch k to worker k % 2: each worker gets one shard here
    for w in range(2):
        mine = {t.index // 8 for b in batches[w::2] for t in b}
        assert len(mine) == 1
    assert interleave_worker_batches(5, 2, 2) and sum(len(b) for b in interleave_worker_batches(5, 2, 2)) == 5


def _same(a, b):
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_resume_mid_epoch_yields_the_same_batches(store_url):
    ref = ShardLoader(store_url, SPEC, batch_size=2, rank=1, world_size=2, num_workers=2, seed=5)
    it = iter(ref)
    full = [next(it) for _ in range(5)]  # 2 batches per epoch: crosses two epoch ends
    first = ShardLoader(store_url, SPEC, batch_size=2, rank=1, world_size=2, num_workers=2, seed=5)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert (state["epoch"], state["consumed"]) == (1, 2)
    other = ShardLoader(store_url, SPEC, batch_size=1, rank=1, world_size=2, num_workers=2, seed=5)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(state)
    resumed = ShardLoader(store_url, SPEC, batch_size=2, rank=1, world_size=2, num_workers=2, seed=5)
    resumed.load_state_dict(state)
    it = iter(resumed)
    for expected in full[3:]:
        _same(next(it), expected)


def test_clouds_without_images_still_yield_samples(store_url):
    store = ShardStore.open(store_url)
    no_image = [i for i in range(len(store)) if len(store[i]["rgb"]) == 0]
    assert no_image
    loader = ShardLoader(store_url, SPEC, batch_size=8, num_workers=0)
    batch = next(iter(loader))
    assert batch["image_count"].tolist().count(0) == len(no_image)
    assert batch["global_offset"].numel() == 16 and batch["local_offset"].numel() == 32
    # every correspondence points into a principal view and a real patch of a real image
    off = torch.cat([torch.zeros(1, dtype=torch.long), batch["global_offset"]])
    principal_rows = torch.cat([torch.arange(off[2 * b], off[2 * b + 1]) for b in range(8)])
    assert torch.isin(batch["corr_row"], principal_rows).all()
    assert batch["corr_image"].max() < batch["images"].shape[0] and batch["corr_patch"].max() < 16
    # the correspondence ties a view point to the stored point it came from
    row = int(batch["corr_row"][0])
    sample = int(torch.searchsorted(batch["global_offset"], torch.tensor(row), right=True)) // 2
    point = int(batch["global_index"][row])
    raw = store[int(batch["sample_index"][sample])]
    assert any(point in set(cp.tolist()) for cp in raw["corr_point"])


def test_store_without_manifest_is_one_clear_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError) as err:
        ShardLoader(str(tmp_path / "nothing"), SPEC, batch_size=1)
    msg = str(err.value)
    assert "nothing" in msg and "\n" not in msg and "manifest" in msg.lower()


def test_empty_store_is_one_clear_error(tmp_path):
    url = str(tmp_path / "empty")
    commit(url, None, [])
    with pytest.raises(DataError, match="empty"):
        ShardLoader(url, SPEC, batch_size=1)


def _damage_first_coord_chunk(url, tmp_path_factory):
    """A copy of the store with one flipped byte in the first shard's coords."""
    import shutil
    from pathlib import Path

    copy = tmp_path_factory.mktemp("damaged") / "s"
    shutil.copytree(url, copy)
    store = ShardStore.open(str(copy))
    chunk = Path(copy) / "shards" / store.shards[0] / "points" / "coord" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-30] ^= 0x11
    chunk.write_bytes(bytes(data))
    return str(copy), store.shards[0], len(store.samples_by_shard()[0])


def test_damaged_shard_fails_loudly_by_default(store_url, tmp_path_factory):
    from pipelines.store import ShardCorruptError

    url, shard, _ = _damage_first_coord_chunk(store_url, tmp_path_factory)
    loader = ShardLoader(url, SPEC, batch_size=2, num_workers=0, seed=0)
    with pytest.raises(ShardCorruptError, match=rf"shard '{shard}': array 'points/coord', chunk 0"):
        for _ in loader.epoch():
            pass


def test_skip_corrupt_leaves_out_and_counts(store_url, tmp_path_factory, caplog):
    url, shard, n_bad = _damage_first_coord_chunk(store_url, tmp_path_factory)
    loader = ShardLoader(url, SPEC, batch_size=2, num_workers=2, seed=0, skip_corrupt=True)
    seen = [i for batch in loader.epoch() for i in batch["sample_index"].tolist()]
    bad = set(ShardStore.open(url).samples_by_shard()[0])
    assert loader.skipped == n_bad == len(bad)
    assert sorted(seen) == sorted(set(range(8)) - bad)
    assert loader.state_dict()["epoch"] == 1  # the epoch still completed
