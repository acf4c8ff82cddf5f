"""``python -m atjt_dist.config > docs/config.md``: print the configuration reference."""

import sys

from . import config_doc

sys.stdout.write(config_doc())
