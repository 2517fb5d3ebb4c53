"""The `baton` command line: argparse front ends that import no Textual (the TUI is imported only when it
runs) and no torch until a command loads the model.

| module | owns |
| --- | --- |
| `main.py` | the `baton` parser, `main(argv)`, `run()` (the program: main, then a prompt exit), exit statuses, the TUI command (imports `app.tui` when it runs) |
| `chat_cmd.py` | `baton chat`: one streamed answer, or a conversation over stdin; the stats line on stderr |
| `chat_history.py` | where `baton chat` keeps its conversation (a chat of the history database), `-c` / `--chat ID` |
| `batch_cmd.py` | `baton batch`: an OpenAI Batch file through the engine, with a rich progress bar |
| `jobs_cmd.py` | `baton jobs ...`: the persistent job queue (`app.jobs`) from the command line |
| `engine_options.py` | the engine options every command shares, `engine_config`, `start_engine` |
| `errors.py` | `UsageError` (exit status 2) |
"""

from .main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
