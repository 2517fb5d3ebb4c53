"""Baton's chat core, shared by every front end (the TUI, the CLI, the job runner, the coming HTTP server).

Framework-free: no Textual, no argparse, no HTTP; it imports `backend` only for `SamplingParams` and
`Priority` (torch-free) and the store only for types.

| module | owns |
| --- | --- |
| `settings.py` | `ChatSettings`: a chat's system prompt and sampling parameters, the one set of chat defaults |
| `prompt.py` | `build_prompt`: the chat messages sent to the engine, from the stored conversation; `prompt_turns` |
| `context_fit.py` | `fit_to_context`: the oldest turns left out of a conversation longer than the context |
| `answer.py` | `AnswerStats` (token counts, cached tokens, TTFT, decode tokens/s of one stream), `is_complete(finish_reason)`, `stats_line` |
| `titles.py` | `title_from`: a chat's title from its first message (the TUI's and `baton chat`'s) |
| `recorder.py` | `AnswerRecorder`: an answer stored at its first token, flushed at one interval, finished with stats |
| `completions.py` | the OpenAI chat-completions format: parse a body, build `chat.completion` and chunks |
| `batch_file.py` | the OpenAI Batch file format: input lines to `BatchRequest`s, output lines |
| `run_request.py` | `run_request`: one batch line on the engine to its output line (`baton batch` and batch jobs) |
"""
