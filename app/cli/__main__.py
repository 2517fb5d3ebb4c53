"""`python -m app.cli`: the `baton` command line."""

from .main import run

run()
