"""python -m concerto.train --data <store> [--config base|large|tiny|<file>]
    [--set key=value ...] [--output DIR] [--steps N] [--resume]"""
import sys

from concerto.train.cli import main

sys.exit(main())
