"""`python -m kernelalg ...`, the same as the `kernelalg` command."""

import sys

from ._cli import main


sys.exit(main())
