"""``python -m pipelines.build``: see ``pipelines.build.cli``."""
import sys

from pipelines.build.cli import main

sys.exit(main())
