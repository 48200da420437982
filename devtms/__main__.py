"""`python -m devtms ...`: the same command line as `devtms ...`."""

import sys

from devtms.cli import main

sys.exit(main())
