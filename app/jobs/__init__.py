"""Persistent background jobs on the engine: OpenAI Batch files and multi-step agent tasks.

Built on the chat core (`app.chat`); imports no Textual and no argparse. A job lives in the store (`storage.Store`'s job queue): its items are committed one by one as they finish,
so a job survives restarts and kills and never runs a finished item twice.

| module | owns |
| --- | --- |
| `files.py` | `load_job_file`: a `.jsonl` OpenAI Batch file or a YAML/JSON agent task -> (kind, name, items, spec) |
| `templates.py` | the `{previous}` / `{stepN}` placeholders of agent step prompts |
| `control.py` | engine-free operations: `submit_job`, `submit_batch` (bytes), `pause_job`, `resume_job`, `cancel_job`, `export_lines` |
| `progress.py` | `JobProgress` (what a view shows: items, the share of the work done counting tokens, rate, ETA), `JobRun` (a running job's bookkeeping), `ProgressPrinter`, `format_duration` |
| `batch_job.py` | running a batch job's items at `Priority.BATCH`, all at once (`app.chat.run_request`); export lines |
| `agent_task.py` | running an agent task's steps at `Priority.AGENT`, the transcript recorded as a chat (`AnswerRecorder`) |
| `runner.py` | `JobRunner`: `run_job`, `run_queued`, `pause`, `resume`, `cancel`, progress callback |
| `results.py` | `item_result`: an item's prompt, output text or error, tokens, finish reason, for people to read |
| `export.py` | `export_job`: a batch job's OpenAI Batch output file, written atomically (`ExportSummary`) |
| `atomic_output.py` | output files that appear whole or not at all (`OutputFileError` when they cannot) |
"""

from .atomic_output import OutputFileError
from .control import cancel_job, export_lines, pause_job, require_job, resume_job, submit_batch, submit_job
from .export import ExportSummary, default_export_path, export_job
from .files import load_job_file
from .progress import JobProgress, ProgressPrinter, format_duration
from .results import ItemResult, item_result
from .runner import JobRunner

__all__ = ["ExportSummary", "ItemResult", "JobProgress", "JobRunner", "OutputFileError", "ProgressPrinter",
           "cancel_job", "default_export_path", "export_job", "export_lines", "format_duration", "item_result",
           "load_job_file", "pause_job", "require_job", "resume_job", "submit_batch", "submit_job"]
