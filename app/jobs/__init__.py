"""Persistent background jobs on the engine: OpenAI Batch files and multi-step agent tasks.

Built on the chat core (`app.chat`); imports no Textual and no argparse. A job lives in the store (`storage.Store`'s job queue): its items are committed one by one as they finish,
so a job survives restarts and kills and never runs a finished item twice.

| module | owns |
| --- | --- |
| `files.py` | `load_job_file`: a `.jsonl` OpenAI Batch file or a YAML/JSON agent task -> (kind, name, items, spec) |
| `templates.py` | the `{previous}` / `{stepN}` placeholders of agent step prompts |
| `control.py` | engine-free operations: `submit_job`, `pause_job`, `resume_job`, `cancel_job`, `export_lines` |
| `progress.py` | `JobProgress` (what a view shows: items, the share of the work done counting tokens, rate, ETA), `JobRun` (a running job's bookkeeping), `ProgressPrinter`, `format_duration` |
| `batch_job.py` | running a batch job's items at `Priority.BATCH`, all at once (`app.chat.run_request`); export lines |
| `agent_task.py` | running an agent task's steps at `Priority.AGENT`, the transcript recorded as a chat (`AnswerRecorder`) |
| `runner.py` | `JobRunner`: `run_job`, `run_queued`, `pause`, `resume`, `cancel`, progress callback |
"""

from .control import cancel_job, export_lines, pause_job, require_job, resume_job, submit_job
from .files import load_job_file
from .progress import JobProgress, ProgressPrinter, format_duration
from .runner import JobRunner

__all__ = ["JobProgress", "JobRunner", "ProgressPrinter", "cancel_job", "export_lines", "format_duration",
           "load_job_file", "pause_job", "require_job", "resume_job", "submit_job"]
