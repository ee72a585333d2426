"""Submanifold sparse conv: torch backend == dense conv3d == spconv Native, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from concerto.model import sparse_conv
from concerto.model.sparse_conv import SubMConv3d, build_kernel_map, resolve_backend


def random_sparse(seed: int, n_samples=2, extent=7, n=120, cin=5):
    gen = torch.Generator().manual_seed(seed)
    coords, batches = [], []
    for b in range(n_samples):
        g = torch.unique(torch.randint(0, extent, (n, 3), generator=gen), dim=0)
        coords.append(g)
        batches.append(torch.full((len(g),), b, dtype=torch.long))
    g = torch.cat(coords).int()
    batch = torch.cat(batches)
    feat = torch.randn(len(g), cin, generator=gen, dtype=torch.float64)
    return g, batch, feat


def dense_reference(feat, g, batch, weight, bias, extent):
    """Scatter to a dense grid per sample, conv3d with padding 1, read back at the active voxels."""
    n_samples = int(batch.max()) + 1
    dense = feat.new_zeros(n_samples, feat.shape[1], extent, extent, extent)
    gl = g.long()
    dense[batch, :, gl[:, 0], gl[:, 1], gl[:, 2]] = feat
    w = weight.permute(0, 4, 1, 2, 3)  # (out, kx, ky, kz, in) -> (out, in, kx, ky, kz)
    out = F.conv3d(dense, w, bias, padding=weight.shape[1] // 2)
    return out[batch, :, gl[:, 0], gl[:, 1], gl[:, 2]]


def make_conv(backend, cin=5, cout=4, k=3, seed=0):
    torch.manual_seed(seed)
    conv = SubMConv3d(cin, cout, k, bias=True, backend=backend).double()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


@pytest.mark.parametrize("chunk_rows", [None, 7], ids=["one-chunk", "7-row-chunks"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_torch_backend_matches_dense_conv_forward_and_backward(kernel_size, chunk_rows, monkeypatch):
    """Also with the kernel map's neighbour search cut into many chunks (the
    default chunk is larger than any cloud here, so it would never loop)."""
    g, batch, feat = random_sparse(0)
    if chunk_rows is not None:
        monkeypatch.setattr(sparse_conv, "KERNEL_MAP_CHUNK", chunk_rows * kernel_size**3)
        assert len(g) > 10 * chunk_rows and len(g) % chunk_rows != 0  # many chunks, the last one short
    conv = make_conv("torch", k=kernel_size)
    f1 = feat.clone().requires_grad_()
    out = conv(f1, g, batch)
    f2 = feat.clone().requires_grad_()
    w2 = conv.weight.detach().clone().requires_grad_()
    b2 = conv.bias.detach().clone().requires_grad_()
    ref = dense_reference(f2, g, batch, w2, b2, extent=7)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(f1.grad, f2.grad)
    torch.testing.assert_close(conv.weight.grad, w2.grad)
    torch.testing.assert_close(conv.bias.grad, b2.grad)


def test_torch_backend_gradcheck():
    g, batch, feat = random_sparse(1, n=25, extent=4, cin=2)
    conv = make_conv("torch", cin=2, cout=3)
    kmap = build_kernel_map(g, batch)
    f = feat.clone().requires_grad_()
    w = conv.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, w: sparse_conv.submanifold_conv_torch(f, w, None, kmap), (f, w)
    )


def test_samples_do_not_see_each_other():
    g, batch, feat = random_sparse(2)
    conv = make_conv("torch")
    both = conv(feat, g, batch)
    first = batch == 0
    alone = conv(feat[first], g[first], batch[first])
    torch.testing.assert_close(both[first], alone)


@pytest.mark.parametrize("train", [True, False])
def test_spconv_native_matches_torch_backend(train):
    pytest.importorskip("spconv.pytorch")
    g, batch, feat = random_sparse(3)
    feat = feat.float()
    ct = make_conv("torch").float()
    cs = make_conv("spconv").float()
    cs.load_state_dict(ct.state_dict())
    ct.train(train)
    cs.train(train)  # eval mode: spconv cannot fuse the bias on CPU, so it is added outside
    f1, f2 = feat.clone().requires_grad_(), feat.clone().requires_grad_()
    cache = {}
    yt = ct(f1, g, batch)
    ys = cs(f2, g, batch, cache)
    torch.testing.assert_close(ys, yt, rtol=1e-5, atol=1e-5)
    # second call reuses the indice pairs cached for this resolution
    torch.testing.assert_close(cs(f2, g, batch, cache), yt, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(yt)
    yt.backward(grad)
    ys.backward(grad)
    torch.testing.assert_close(f2.grad, f1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cs.weight.grad, ct.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cs.bias.grad, ct.bias.grad, rtol=1e-4, atol=1e-4)


def test_backend_choice_and_errors():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="sparse_conv_backend"):
        resolve_backend("cuda-magic", torch.device("cpu"))
    g = torch.tensor([[0, 0, 0], [0, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="duplicate voxels"):
        build_kernel_map(g, torch.zeros(2, dtype=torch.long))


def test_kernel_map_is_the_same_in_chunks(monkeypatch):
    g, batch, _ = random_sparse(4, n_samples=3)
    whole = build_kernel_map(g, batch)
    monkeypatch.setattr(sparse_conv, "KERNEL_MAP_CHUNK", 5 * 27)  # 5 rows per search
    chunked = build_kernel_map(g, batch)
    assert len(g) > 50
    assert torch.equal(chunked.neighbors, whole.neighbors)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(chunked.pairs, whole.pairs))


def test_kernel_map_neighbours():
    # a 2x1x1 pair: each voxel sees the other at offsets (+1,0,0) / (-1,0,0)
    g = torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.int32)
    nb = build_kernel_map(g, torch.zeros(2, dtype=torch.long)).neighbors
    centre, plus_x, minus_x = 13, 13 + 9, 13 - 9
    assert nb[0, centre] == 0 and nb[1, centre] == 1
    assert nb[0, plus_x] == 1 and nb[1, minus_x] == 0
    assert (nb == 2).sum() == 2 * 27 - 4  # everything else is the empty marker N
