"""``python -m atjt_dist.pretrain``: kept for scripts; the command lives in atjt_dist.commands.pretrain."""

import sys

from .commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
