"""`python -m app`: the `baton` command line."""

import sys

from .cli import main

sys.exit(main())
