"""Command palette (Ctrl+P) commands for the chat screen's actions."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

#: (name in the palette, help text, action on the chat screen)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("New chat", "Start a new conversation", "new_chat"),
    ("Rename chat", "Give the open chat a new title", "rename_chat"),
    ("Delete chat", "Delete the open chat and its messages (asks first)", "delete_chat"),
    ("Archive / unarchive chat", "Hide the open chat from the list, or bring it back", "archive_chat"),
    ("Show / hide archived chats", "List archived chats too, or not", "toggle_archived"),
    ("Search history", "Full-text search over every message", "search"),
    ("Chat settings", "System prompt, temperature, top-p, max tokens, seed", "settings"),
    ("Export chat", "Write the open chat to Markdown and JSON files", "export_chat"),
    ("Background jobs", "Jobs and their progress: submit a file, pause, resume, cancel", "jobs"),
    ("Toggle live panel", "Show what the GPU and the batch are doing", "toggle_panel"),
    ("Stop generation", "Stop the open chat's answer (the partial answer is kept)", "stop"),
    ("Regenerate last answer", "Answer the last message again (the old answer is kept)", "regenerate"),
    ("Copy last answer", "Copy the open chat's last answer to the clipboard", "copy_last"),
    ("Copy code from last answer", "Copy the first code block of the last answer", "copy_last_code"),
    ("Help", "Show the keys", "help"),
)


class BatonCommands(Provider):
    """The chat screen's actions in the command palette (Textual's own commands stay too)."""

    async def discover(self) -> Hits:
        """Every command, for the palette's empty query."""
        for name, help_text, action in COMMANDS:
            yield DiscoveryHit(name, partial(self.screen.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        """Commands whose name fuzzily matches the query."""
        matcher = self.matcher(query)
        for name, help_text, action in COMMANDS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self.screen.run_action, action), help=help_text)
