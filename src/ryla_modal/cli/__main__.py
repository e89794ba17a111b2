"""``python -m ryla_modal.cli``."""

import sys

from ryla_modal.cli import main

sys.exit(main())
