"""`python -m gpushare.cli`, as the console script."""

import sys

from . import main

sys.exit(main())
