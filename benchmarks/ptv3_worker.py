"""One timed PTv3 run in a fresh process, for benchmarks/bench_ptv3.py.

    python ptv3_worker.py --impl ours|official --mode forward|train --case CASE.pt --out OUT.pt [--repeats 2]

``CASE.pt`` holds ``config`` (reference keyword names), ``state_dict`` (the
reference's parameter names), ``orders`` and the grid-sampled input ``point``
(coord, grid_coord, feat, offset, grid_size). ``ours`` is concerto.model;
``official`` is the Sonata release of PT-v3m2 from the checkout named by
CONCERTO_OFFICIAL_SONATA, run by an interpreter that has spconv-cu120 and
torch-scatter (this file imports nothing from concerto in that case).

Prints one JSON line: best wall and CPU seconds over ``repeats`` (after one untimed warm-up
on the same input), peak resident memory above the process's resident memory
before the first call (MB), and writes the output features to OUT.pt.

Official code on CPU, as INSTALL-NOTES says (plus unshuffled curves in its
poolings, as ours gets ``orders``, so the outputs can be compared): no flash attention
(``enable_flash=False``: its explicit softmax path), every sparse conv with
``ConvAlgo.Native``, and the conv bias added outside spconv (spconv fuses it in
a CUDA-only kernel in eval), all from ``scripts/golden/official_cpu.py``, which
also stands in for ``timm``'s DropPath (timm pulls a CUDA torch).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def official_model(case: dict):
    root = os.environ.get("CONCERTO_OFFICIAL_SONATA")
    if not root:
        raise SystemExit("CONCERTO_OFFICIAL_SONATA is not set")
    # the golden scripts' CPU stand-ins: timm's DropPath, spconv Native + bias outside in eval
    sys.path[:0] = [root, str(Path(__file__).resolve().parents[1] / "scripts" / "golden")]
    import official_cpu

    official_cpu.stub_timm()
    official_cpu.spconv_on_cpu()
    from sonata.model import GridPooling, PointTransformerV3

    keep = {
        "in_channels", "order", "stride", "enc_depths", "enc_channels", "enc_num_head", "enc_patch_size",
        "dec_depths", "dec_channels", "dec_num_head", "dec_patch_size", "mlp_ratio", "qkv_bias", "qk_scale",
        "attn_drop", "proj_drop", "drop_path", "layer_scale", "pre_norm", "enable_rpe", "mask_token",
        "enc_mode", "freeze_encoder",
    }
    kw = {k: v for k, v in case["config"].items() if k in keep}
    kw.update(order=tuple(case["orders"]), shuffle_orders=False, enable_flash=False,
              upcast_attention=False, upcast_softmax=False)
    model = PointTransformerV3(**kw)
    model.load_state_dict(case["state_dict"], strict=True)
    for m in model.modules():
        if isinstance(m, GridPooling):
            # the model does not pass shuffle_orders on to its poolings (they default to
            # shuffling); fixed curves in both implementations make the outputs comparable
            m.shuffle_orders = False

    def run(point: dict):
        out = model(dict(point))
        return out.feat

    return model, run


def our_model(case: dict):
    from concerto.model import PointTransformerV3, PTv3Config

    cfg = PTv3Config.from_dict({**case["config"], "sparse_conv_backend": "torch"})
    model = PointTransformerV3(cfg)
    model.load_state_dict(case["state_dict"], strict=True)
    orders = tuple(case["orders"])

    def run(point: dict):
        return model(dict(point), orders=orders).feat

    return model, run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["ours", "official"], required=True)
    ap.add_argument("--mode", choices=["forward", "train"], required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    case = torch.load(args.case, weights_only=False)
    model, run = (official_model if args.impl == "official" else our_model)(case)
    point = case["point"]
    base = rss_mb()

    def step():
        if args.mode == "forward":
            model.eval()
            with torch.inference_mode():
                return run(point)
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        feat = run(point)
        feat.square().mean().backward()
        return feat.detach()

    step()  # warm-up: first-call set-up (kernels, allocator) is not timed
    best = cpu = float("inf")
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        feat = step()
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    torch.save(feat.clone(), args.out)
    print(json.dumps({"impl": args.impl, "mode": args.mode, "seconds": best, "cpu_seconds": cpu, "peak_mb": peak,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
