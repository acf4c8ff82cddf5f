"""``python -m atjt_dist.audit``: kept for scripts; the command lives in atjt_dist.commands.audit."""

import sys

from .commands.audit import main

if __name__ == "__main__":
    sys.exit(main())
