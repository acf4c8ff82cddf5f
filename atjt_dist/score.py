"""``python -m atjt_dist.score``: kept for scripts; the command lives in atjt_dist.commands.score."""

import sys

from .commands.score import main

if __name__ == "__main__":
    sys.exit(main())
