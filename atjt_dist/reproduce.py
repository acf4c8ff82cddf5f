"""``python -m atjt_dist.reproduce``: kept for scripts; the command lives in atjt_dist.commands.reproduce."""

import sys

from .commands.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
