"""``python -m concerto.demo <command>``: see ``concerto.demo`` and each command's ``--help``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from concerto.demo import batch, pca, segment, similarity, video

COMMANDS = (pca, similarity, segment, batch, video)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m concerto.demo",
                                     description="The official Sonata / Concerto demos for your own scans "
                                                 "(PLY, NPY, NPZ, PTH, Pointcept folders).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run one command; prints what it wrote. Bad input: one ``error:`` line naming it, exit 2."""
    from concerto.demo.features import DemoError
    from concerto.demo.scan import ScanError
    from concerto.inference import InferenceError

    args = build_parser().parse_args(argv)
    try:
        paths = args.run(args)
    except (DemoError, ScanError, InferenceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, path in paths.items():
        if not key.startswith("frame_") or key == "frame_000":
            print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
