"""``python -m atjt_dist.report``: kept for scripts; the command lives in atjt_dist.commands.report."""

import sys

from .commands.report import main

if __name__ == "__main__":
    sys.exit(main())
