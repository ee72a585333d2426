"""Space-filling-curve codes: against plain slow definitions, reference values, locality."""

import pytest
import torch

from concerto.model import Point
from concerto.model.serialization import (
    default_depth,
    encode,
    hilbert_encode,
    serialize,
    z_order_encode,
)


def morton_plain(x: int, y: int, z: int, depth: int) -> int:
    code = 0
    for i in range(depth):
        code |= ((x >> i) & 1) << (3 * i + 2)
        code |= ((y >> i) & 1) << (3 * i + 1)
        code |= ((z >> i) & 1) << (3 * i)
    return code


def hilbert_plain(x: int, y: int, z: int, depth: int) -> int:
    """Skilling (2004) AxesToTranspose, written out on Python ints, then interleaved."""
    X = [x, y, z]
    M = 1 << (depth - 1)
    Q = M
    while Q > 1:
        P = Q - 1
        for i in range(3):
            if X[i] & Q:
                X[0] ^= P
            else:
                t = (X[0] ^ X[i]) & P
                X[0] ^= t
                X[i] ^= t
        Q >>= 1
    for i in range(1, 3):
        X[i] ^= X[i - 1]
    t = 0
    Q = M
    while Q > 1:
        if X[2] & Q:
            t ^= Q - 1
        Q >>= 1
    for i in range(3):
        X[i] ^= t
    return morton_plain(X[0], X[1], X[2], depth)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 9, 16])
def test_codes_match_plain_definitions(depth):
    gen = torch.Generator().manual_seed(depth)
    g = torch.randint(0, 1 << depth, (300, 3), generator=gen)
    z = z_order_encode(g, depth).tolist()
    h = hilbert_encode(g, depth).tolist()
    for (x, y, w), zc, hc in zip(g.tolist(), z, h):
        assert zc == morton_plain(x, y, w, depth)
        assert hc == hilbert_plain(x, y, w, depth)


def test_trans_variants_swap_x_and_y():
    g = torch.randint(0, 64, (200, 3), generator=torch.Generator().manual_seed(1))
    swapped = g[:, [1, 0, 2]]
    assert torch.equal(encode(g, None, 6, "z-trans"), z_order_encode(swapped, 6))
    assert torch.equal(encode(g, None, 6, "hilbert-trans"), hilbert_encode(swapped, 6))


def test_codes_equal_reference_values():
    # Values produced by the Pointcept/Sonata reference encoder for this input
    # (batched codes, depth from its adaptive rule).
    g = torch.tensor([[0, 0, 0], [1, 2, 3], [7, 0, 5], [3, 3, 3], [6, 1, 2], [2, 7, 4], [5, 5, 0], [4, 6, 7]])
    b = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    depth = default_depth(g)
    assert depth == 4
    expected = {
        "z": [0, 29, 357, 63, 4394, 4338, 4486, 4569],
        "z-trans": [0, 43, 211, 63, 4252, 4468, 4486, 4585],
        "hilbert": [0, 36, 282, 45, 4327, 4501, 4230, 4471],
        "hilbert-trans": [0, 20, 430, 45, 4183, 4387, 4230, 4449],
    }
    for name, codes in expected.items():
        assert encode(g, b, depth, name).tolist() == codes, name


def test_hilbert_visits_face_neighbours_in_a_full_grid():
    ax = torch.arange(8)
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    for name in ("hilbert", "hilbert-trans"):
        code = encode(g, None, 3, name)
        assert torch.equal(torch.sort(code).values, torch.arange(512))  # a bijection
        path = g[torch.argsort(code)]
        steps = (path[1:] - path[:-1]).abs().sum(1)
        assert bool((steps == 1).all()), name


def test_z_order_is_local():
    ax = torch.arange(16)
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    path = g[torch.argsort(z_order_encode(g, 4))]
    mean_step = (path[1:] - path[:-1]).float().norm(dim=1).mean()
    rand = g[torch.randperm(len(g), generator=torch.Generator().manual_seed(0))]
    mean_rand = (rand[1:] - rand[:-1]).float().norm(dim=1).mean()
    assert mean_step < 2.0 < mean_rand


def test_serialize_keeps_samples_contiguous_and_inverts():
    gen = torch.Generator().manual_seed(3)
    g = torch.randint(0, 40, (500, 3), generator=gen).int()
    batch = torch.sort(torch.randint(0, 3, (500,), generator=gen)).values
    ser = serialize(g, batch, ("z", "hilbert", "z-trans", "hilbert-trans"))
    assert ser.depth == 6  # int(39 + 1).bit_length()
    x = torch.arange(500)
    for k in range(4):
        assert torch.equal(batch[ser.order[k]], batch)  # sorting never mixes samples
        assert torch.equal(x[ser.order[k]][ser.inverse[k]], x)
        assert bool((ser.code[k][ser.order[k]].diff() >= 0).all())


def test_point_serialization_shuffles_and_fixes_orders():
    g = torch.randint(0, 20, (100, 3), generator=torch.Generator().manual_seed(0)).int()
    names = ("z", "z-trans", "hilbert", "hilbert-trans")
    fixed = Point(grid_coord=g).serialization(order=names)
    assert fixed.order == names
    seen = set()
    for seed in range(8):
        p = Point(grid_coord=g).serialization(names, shuffle_orders=True, generator=torch.Generator().manual_seed(seed))
        # ``order`` keeps the list as given (the reference's pooling reshuffles the
        # original list at every stage); the codes follow ``serialized_names``
        assert p.order == names
        seen.add(p.serialized_names)
        for k, name in enumerate(p.serialized_names):
            assert torch.equal(p.serialized_code[k], fixed.serialized_code[names.index(name)])
    assert len(seen) > 1


def test_depth_limit_and_bad_order():
    g = torch.tensor([[0, 0, 1 << 16]])
    with pytest.raises(ValueError, match="depth"):
        serialize(g, torch.zeros(1, dtype=torch.long), ("z",))
    with pytest.raises(ValueError, match="unknown serialization order"):
        encode(torch.zeros(1, 3, dtype=torch.long), None, 4, "peano")
