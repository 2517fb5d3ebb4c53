"""`UsageError`: a bad argument or input the user must fix; every `baton` command raises it and
`app.cli.main` turns it into one `baton: error: ...` line and exit status 2."""


class UsageError(Exception):
    """A bad argument or input that the user must fix (the CLI exits with status 2)."""
