"""``python -m genlab``: the command line."""

import sys

from genlab.cli import main

sys.exit(main())
