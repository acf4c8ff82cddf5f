"""``python -m atjt_dist.compare``: kept for scripts; the command lives in atjt_dist.commands.compare."""

import sys

from .commands.compare import main

if __name__ == "__main__":
    sys.exit(main())
