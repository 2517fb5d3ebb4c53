"""`python -m app.cli`: the `baton` command line."""

import sys

from .main import main

sys.exit(main())
