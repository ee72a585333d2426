"""The results table: every evaluation appends one row; this turns the rows into markdown and a bar chart.

    python -m concerto.eval.report --results results.jsonl [--markdown results.md] [--png results.png]

Rows are JSON lines with at least ``dataset, split, mode, checkpoint, mIoU,
mAcc, allAcc`` (fractions in [0, 1]) and optional ``seed``, ``protocol`` (e.g.
"scenes 10%", "100 points"), ``output``, ``time``. Rows that agree on
everything but the seed are one line of the table: mean and standard deviation
over seeds (n = number of seeds).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

REQUIRED = ("dataset", "split", "mode", "checkpoint", "mIoU", "mAcc", "allAcc")
GROUP = ("dataset", "split", "mode", "protocol", "checkpoint")


RUNS_DIR = "runs"


def checkpoint_name(checkpoint: str, config: str = "tiny") -> str:
    """A short name for what ``--checkpoint`` names: the run folder's name (also for a
    file inside it), a step folder as ``<run>-step_N``, a released name as is, and
    ``random-<preset>`` for the random baseline."""
    if checkpoint == "random":
        return f"random-{config}"
    p = Path(checkpoint)
    if not p.exists():
        return p.name or checkpoint  # a released name
    if p.is_file():
        p = p.parent if p.stem in ("backbone", "state", "model") else p.with_suffix("")
    if p.name.startswith("step_") and p.parent.name == "checkpoints":
        return f"{p.parent.parent.name}-{p.name}"
    return p.name or "checkpoint"


def default_output_dir(what: str, checkpoint: str, config: str = "tiny") -> Path:
    """Where an evaluation writes when not told: ``runs/<what>-<checkpoint name>``
    (beside ``runs/segment-<mode>``), not the current directory."""
    return Path(RUNS_DIR) / f"{what}-{checkpoint_name(checkpoint, config)}"


def append_result(path, row: dict) -> Path:
    """Append one row (a dict with ``REQUIRED`` keys) to the JSON-lines file ``path``."""
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"results row lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = dict(row, time=row.get("time", time.strftime("%Y-%m-%dT%H:%M:%S")))
    with open(path, "a") as f:  # one short write per row: appends from several runs do not interleave
        f.write(json.dumps(row, default=str) + "\n")
    return path


def read_results(path) -> list[dict]:
    """Rows of a results file; a malformed line raises ValueError naming the file and line."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"results file {path}: line {n} is not JSON ({exc})") from exc
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ValueError(f"results file {path}: line {n} lacks {missing}")
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per GROUP key (first-seen order): mean / std of the metrics over its rows, n, seeds."""
    groups: "OrderedDict[tuple, list[dict]]" = OrderedDict()
    for r in rows:
        groups.setdefault(tuple(str(r.get(k, "") or "") for k in GROUP), []).append(r)
    out = []
    for key, rs in groups.items():
        entry = dict(zip(GROUP, key), n=len(rs), seeds=[r.get("seed") for r in rs])
        for m in ("mIoU", "mAcc", "allAcc"):
            v = np.array([np.nan if r[m] is None else float(r[m]) for r in rs])
            entry[m] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            entry[m + "_std"] = float(np.nanstd(v)) if np.isfinite(v).sum() > 1 else 0.0
        out.append(entry)
    return out


def markdown_table(summary: list[dict]) -> str:
    def pct(e, m):
        if not np.isfinite(e[m]):
            return "n/a"
        return f"{100 * e[m]:.1f} ± {100 * e[m + '_std']:.1f}" if e["n"] > 1 else f"{100 * e[m]:.1f}"

    lines = ["| dataset | split | mode | protocol | checkpoint | mIoU | mAcc | allAcc | n |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for e in summary:
        lines.append(f"| {e['dataset']} | {e['split']} | {e['mode']} | {e['protocol'] or '-'} | {e['checkpoint']} | "
                     f"{pct(e, 'mIoU')} | {pct(e, 'mAcc')} | {pct(e, 'allAcc')} | {e['n']} |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: list[dict], path, metric: str = "mIoU") -> Path:
    """PNG: one bar per table line (mean, with the std over seeds as an error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e['mode']}{' ' + e['protocol'] if e['protocol'] else ''}\n{Path(e['checkpoint']).name or e['checkpoint']}"
              for e in summary]
    vals = [100 * e[metric] if np.isfinite(e[metric]) else 0.0 for e in summary]
    errs = [100 * e[metric + "_std"] for e in summary]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(summary) + 1.5), 4.0), dpi=100)
    ax.bar(range(len(vals)), vals, yerr=errs, capsize=3, color="#4C72B0")
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    datasets = sorted({e["dataset"] for e in summary})
    ax.set_title(f"{metric}: {', '.join(Path(d).name or d for d in datasets)}", fontsize=9)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m concerto.eval.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="JSON-lines results file the evaluations appended to")
    parser.add_argument("--markdown", default=None, help="output .md (default: beside --results)")
    parser.add_argument("--png", default=None, help="output bar chart (default: beside --results)")
    parser.add_argument("--metric", default="mIoU", choices=("mIoU", "mAcc", "allAcc"))
    args = parser.parse_args(argv)
    res = Path(args.results)
    if not res.is_file():
        print(f"error: results file {res} does not exist", file=sys.stderr)
        return 2
    try:
        rows = read_results(res)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: results file {res} has no rows", file=sys.stderr)
        return 2
    summary = summarise(rows)
    table = markdown_table(summary)
    md = Path(args.markdown) if args.markdown else res.with_suffix(".md")
    md.write_text(table)
    png = bar_chart(summary, args.png or res.with_suffix(".png"), args.metric)
    print(table)
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
