"""``python -m atjt_dist <command> ...``: the same as the ``atjt`` command (atjt_dist.main)."""

import sys

from .main import main

sys.exit(main())
