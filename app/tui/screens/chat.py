"""The main screen: chat list, the open chat, the prompt, the status line and (toggled) the live panel.

Actions start workers (store operations via `ChatLibrary`, turns via `Sessions`); workers post
`app.tui.messages` facts to the chat pane, which shows those about the open chat and lets them bubble up here,
where the `@on(...)` handlers keep the chat list and the status line. A chat that is not shown keeps
streaming into `Sessions`.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Coroutine

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from backend import EngineConfig
from storage import Chat, SearchHit, Store

from ...chat.settings import ChatSettings
from ...jobs import JobRunner
from .. import messages as m
from ..commands import BatonCommands
from ..engine_loader import in_daemon_thread, load_engine
from ..library import ChatLibrary, export_base
from ..sessions import BusyError, Sessions
from ..widgets.chat_list import ChatList
from ..widgets.chat_pane import ChatPane
from ..widgets.live_panel import LivePanel
from ..widgets.message_view import MessageView
from ..widgets.prompt_input import PromptInput
from ..widgets.status_line import StatusLine
from .confirm import ConfirmScreen
from .help import HelpScreen
from .jobs import JobsScreen
from .search import SearchScreen
from .settings import SettingsScreen
from .text_prompt import TextPromptScreen

if TYPE_CHECKING:
    from backend import Engine


class ChatScreen(Screen):
    """Runs many chats at once against one engine.

    Args:
        store: the open history store.
        engine: the engine; when not started yet (or None: made from `config`) it is started in a thread once
            the first frame is drawn, while the UI works.
        jobs: the app's job runner (its requests are labelled on the live panel; the jobs screen uses it).
        show_panel: open the live panel at once.
        panel_interval: seconds between the live panel's refreshes.
        config: the engine's configuration (default: the engine's own; required when `engine` is None).
    Raises:
        ValueError: neither an engine nor a configuration is given.
    """

    COMMANDS = {BatonCommands}
    # Side columns shrink as the terminal narrows; below 130 columns the live panel moves under the chat
    # (baton.tcss), so the open chat keeps its width from 60 columns up.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-medium"), (130, "-roomy"), (150, "-wide")]
    BINDINGS = [
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("escape", "stop", "Stop", tooltip="Stop the open chat's answer (the partial answer is kept)"),
        Binding("f1,question_mark", "help", "Help", tooltip="Show the keys (? when not typing)"),
        Binding("ctrl+r", "regenerate", "Regenerate", tooltip="Answer the last message again, keeping the old "
                "answer ([ / ] on an answer pages through them)"),
        Binding("ctrl+f", "search", "Search", tooltip="Full-text search over every message"),
        Binding("ctrl+b", "toggle_panel", "Live panel", tooltip="Show/hide the live engine panel"),
        Binding("f2", "rename_chat", "Rename", tooltip="Rename the open chat"),
        Binding("f3", "settings", "Settings", tooltip="Chat settings: system prompt, temperature, top-p, "
                "max tokens, seed"),
        Binding("f4", "archive_chat", "Archive", tooltip="Archive / unarchive the open chat"),
        Binding("f5", "toggle_archived", "Show archived", tooltip="List archived chats too (or not)"),
        Binding("f9", "jobs", "Jobs", tooltip="Background jobs: progress, submit, pause / resume / cancel"),
        Binding("f8", "delete_chat", "Delete", tooltip="Delete the open chat (asks first)"),
        Binding("ctrl+s", "export_chat", "Export", tooltip="Export the open chat to Markdown + JSON"),
        Binding("ctrl+l", "focus_chats", "Chat list", show=False, tooltip="Focus the chat list"),
        # Priority: a focused message's scroll view binds Ctrl+PgUp/PgDn (sideways paging) first.
        Binding("alt+down,ctrl+pagedown", "next_chat", "Next chat", show=False, priority=True,
                tooltip="Open the next chat in the list"),
        Binding("alt+up,ctrl+pageup", "previous_chat", "Previous chat", show=False, priority=True,
                tooltip="Open the previous chat in the list"),
    ]

    def __init__(self, store: Store, engine: Engine | None, jobs: JobRunner, *, show_panel: bool = False,
                 panel_interval: float = 0.5, config: EngineConfig | None = None) -> None:
        super().__init__()
        self.store = store
        self.jobs = jobs
        self.sessions = Sessions(store, post=self._post, launch=self._launch)
        self.pane = ChatPane(id="chat-pane")
        self.library = ChatLibrary(store, self.sessions, self._post)
        self.show_archived = False
        self._engine = engine
        self._config = engine.config if engine is not None else config
        if self._config is None:
            raise ValueError("config: required when no engine is given")
        self._show_panel = show_panel
        self._panel_interval = panel_interval
        self._unwanted = threading.Event()

    def compose(self) -> ComposeResult:
        """The chat list, the open chat, the status line and the footer."""
        with Horizontal(id="body"):
            yield ChatList(id="chat-list")
            yield self.pane
        yield StatusLine(id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Load the chat list; once the first frame is drawn, load the model (in a thread) unless it is running;
        open the panel if asked."""
        self._run(self.library.load(self.show_archived))
        if self._engine is not None and self._engine.started:
            self.post_message(m.ModelLoaded(self._engine))
        else:
            self.query_one(StatusLine).loading(self._config.model)
            self.call_after_refresh(self._load_model)
        if self._show_panel:
            self._mount_panel()
        self.query_one(PromptInput).focus()

    def on_unmount(self) -> None:
        """A model still loading is not wanted any more."""
        self._unwanted.set()

    def _load_model(self) -> None:
        """Make and start the engine in a thread: torch is imported there, after the first frame."""
        load = partial(load_engine, self._engine or self._config, self.post_message, self._unwanted.is_set)
        self.app.run_worker(in_daemon_thread(load), name="load model", group="model", exit_on_error=False)

    # ------------------------------------------------------------------------------ helpers
    def _post(self, message: Message) -> None:
        """Deliver a worker's fact to the chat pane, from where it bubbles up to this screen."""
        self.pane.post_message(message)

    def _run(self, work: Coroutine[Any, Any, None], name: str = "store") -> None:
        """Run a store operation as a worker (its failure becomes a notification)."""
        self.app.run_worker(work, name=name, group="store", exit_on_error=False)

    def _launch(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run one chat's turn as a worker of its own."""
        self.app.run_worker(work, name=name, group="generation", exit_on_error=False)

    def _open_chat(self) -> Chat | None:
        chat = self.pane.chat
        if chat is None:
            self.notify("No chat is open: Ctrl+N starts one", severity="warning")
        return chat

    def _chat_id(self) -> int | None:
        return None if self.pane.chat is None else self.pane.chat.id

    def _mark(self, chat_id: int) -> None:
        """Show whether a chat is answering (list marker, status count)."""
        busy = self.sessions.busy_chats()
        self.query_one(ChatList).set_busy(chat_id, chat_id in busy)
        self.query_one(StatusLine).set_busy(len(busy))

    # ------------------------------------------------------------------------------ actions
    def action_new_chat(self) -> None:
        """Start a new chat."""
        self._run(self.library.create())

    def action_rename_chat(self) -> None:
        """Rename the open chat."""
        if chat := self._open_chat():
            self.app.push_screen(TextPromptScreen("Rename chat", chat.title, ok="Rename"),
                                 lambda title: title and self._run(self.library.rename(chat.id, title)))

    def action_delete_chat(self) -> None:
        """Delete the open chat, after a confirmation."""
        if chat := self._open_chat():
            question = f"Delete “{chat.title}” and all its messages? This cannot be undone."
            self.app.push_screen(ConfirmScreen(question, "Delete"),
                                 lambda yes: yes and self._run(self.library.delete(chat.id)))

    def action_archive_chat(self) -> None:
        """Archive the open chat (or bring it back)."""
        if chat := self._open_chat():
            self._run(self.library.archive(chat.id, not chat.archived))

    def action_toggle_archived(self) -> None:
        """List archived chats too, or not."""
        self.show_archived = not self.show_archived
        self._run(self.library.load(self.show_archived))

    def action_search(self) -> None:
        """Search every message; the chosen hit's chat opens."""
        self.app.push_screen(SearchScreen(self.store.search), self._search_chosen)

    def _search_chosen(self, hit: SearchHit | None) -> None:
        if hit is None:
            return
        if hit.chat.archived and not self.show_archived:
            self.show_archived = True
            self._run(self.library.load(True, select=hit.chat.id))
        self._run(self.library.open(hit.chat.id, show=hit.message.id))  # the hit's branch, if not shown
        self.query_one(PromptInput).focus()

    def action_settings(self) -> None:
        """Edit the open chat's settings."""
        if chat := self._open_chat():
            self.app.push_screen(SettingsScreen(chat.title, ChatSettings.of(chat)),
                                 lambda s: s and self._run(self.library.save_settings(chat.id, s)))

    def action_export_chat(self) -> None:
        """Export the open chat to Markdown and JSON files."""
        if chat := self._open_chat():
            base = export_base(Path.cwd(), chat.id, chat.title)
            self.app.push_screen(TextPromptScreen("Export to (.md and .json are added)", str(base), ok="Export"),
                                 lambda path: path and self._run(self.library.export(chat.id, Path(path))))

    def action_toggle_panel(self) -> None:
        """Show or hide the live engine panel."""
        panels = self.query(LivePanel)
        if panels:
            panels.remove()
        else:
            self._mount_panel()
        self.post_message(m.PanelToggled(not panels))

    def _mount_panel(self) -> None:
        sessions = self.sessions
        self.query_one("#body").mount(LivePanel(
            stats=lambda: sessions.engine.stats() if sessions.engine else None,
            memory=lambda: sessions.engine.memory() if sessions.engine else None,
            describe=self._describe, interval=self._panel_interval,
            max_batch_size=self._config.max_batch_size, id="live-panel"))

    def _describe(self, request_id: str) -> tuple[str, str]:
        """A live panel row's label: a background job's item, else a chat's answer."""
        return self.jobs.describe(request_id) or self.sessions.describe(request_id)

    def action_jobs(self) -> None:
        """Show the background jobs."""
        self.app.push_screen(JobsScreen(self.store, self.jobs), lambda chat_id: chat_id and self.show_chat(chat_id))

    def show_chat(self, chat_id: int) -> None:
        """List (and highlight) a chat and open it, e.g. an agent task's transcript."""
        self._run(self.library.load(self.show_archived, select=chat_id))
        self._run(self.library.open(chat_id))
        self.query_one(PromptInput).focus()

    def action_stop(self) -> None:
        """Stop the open chat's answer."""
        if self.pane.chat is not None:
            self.sessions.stop(self.pane.chat.id)

    def action_regenerate(self) -> None:
        """Answer the open chat's last message again."""
        if chat := self._open_chat():
            try:
                self.sessions.regenerate(chat)
            except BusyError as exc:
                self.notify(str(exc), severity="warning")

    def action_copy_last(self) -> None:
        """Copy the open chat's last answer."""
        self.pane.copy_last_answer(code=False)

    def action_copy_last_code(self) -> None:
        """Copy the first code block of the open chat's last answer."""
        self.pane.copy_last_answer(code=True)

    def action_help(self) -> None:
        """Show the keys."""
        self.app.push_screen(HelpScreen.for_bindings(self.BINDINGS))

    def action_focus_chats(self) -> None:
        """Focus the chat list."""
        self.query_one(ChatList).focus()

    def action_next_chat(self) -> None:
        """Open the chat below the highlighted one in the list (after the last: the first)."""
        self._step_chat(1)

    def action_previous_chat(self) -> None:
        """Open the chat above the highlighted one in the list (before the first: the last)."""
        self._step_chat(-1)

    def _step_chat(self, step: int) -> None:
        """Move the list's highlight (which follows the open chat) by `step`, open that chat, focus the prompt.
        The highlight moves at once, so keys pressed before the chat has opened step on from it."""
        chat_list = self.query_one(ChatList)
        ids = chat_list.chat_ids
        if not ids:
            return
        here = chat_list.highlighted
        index = (here + step if here is not None else (0 if step > 0 else -1)) % len(ids)
        chat_list.highlighted = index
        self._run(self.library.open(ids[index]))
        self.query_one(PromptInput).focus()

    # ------------------------------------------------------------------------ the prompt
    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        """Send what the user typed into the open chat (or start a chat with it), or resend an edit."""
        event.stop()
        chat = self.pane.chat
        if chat is None:  # typing into the empty screen starts a chat, as a person expects
            if event.editing is None:
                self._run(self.library.create(event.text))
                self.pane.prompt_sent()
            else:
                self.pane.prompt_refused()
            return
        try:
            if event.editing is None:
                self.sessions.send(chat, event.text)
            else:
                self.sessions.edit_and_resend(chat, event.editing, event.text)
        except BusyError as exc:
            self.notify(str(exc), severity="warning")
            self.pane.prompt_refused()
            return
        self.pane.prompt_sent()

    @on(MessageView.EditRequested)
    def _edit(self, event: MessageView.EditRequested) -> None:
        event.stop()
        chat = self.pane.chat
        if chat is not None and chat.id in self.sessions.busy_chats():
            self.notify("This chat is still answering: Esc stops it first", severity="warning")
            return
        self.pane.begin_edit(event.message_id, event.text)

    @on(MessageView.AlternativeRequested)
    def _alternative(self, event: MessageView.AlternativeRequested) -> None:
        event.stop()
        chat = self.pane.chat
        if chat is None:
            return
        if chat.id in self.sessions.busy_chats():
            self.notify("This chat is still answering: Esc stops it first", severity="warning")
            return
        self._run(self.library.show_alternative(chat.id, event.message_id, event.step))

    @on(m.BranchChanged)
    def _branch_changed(self, event: m.BranchChanged) -> None:
        if self._chat_id() == event.chat_id:
            self._run(self.library.read_branch(event.chat_id))

    # ------------------------------------------------------------------------ the list
    @on(ChatList.ChatChosen)
    def _chat_chosen(self, event: ChatList.ChatChosen) -> None:
        self._run(self.library.open(event.chat_id))
        self.query_one(PromptInput).focus()  # what the user types next goes to the chat they chose

    @on(m.ChatsLoaded)
    def _chats_loaded(self, event: m.ChatsLoaded) -> None:
        chat_list = self.query_one(ChatList)
        chat_list.show_chats(event.chats, self.sessions.busy_chats(), event.select or self._chat_id(),
                             event.show_archived)
        if self.pane.chat is None and event.chats and event.select is None:
            self._run(self.library.open(event.select or event.chats[0].id))

    @on(m.ChatOpened)
    def _opened(self, event: m.ChatOpened) -> None:
        self.query_one(ChatList).highlight_chat(event.chat.id)

    @on(m.ChatCreated)
    def _created(self, event: m.ChatCreated) -> None:
        self._run(self.library.load(self.show_archived, select=event.chat.id))
        self._run(self.library.open(event.chat.id))
        self.query_one(PromptInput).focus()

    @on(m.ChatChanged)
    def _changed(self, event: m.ChatChanged) -> None:
        if event.chat.archived and not self.show_archived:
            self._run(self.library.load(self.show_archived))
        else:
            self.query_one(ChatList).update_chat(event.chat)

    @on(m.ChatArchived)
    async def _archived(self, event: m.ChatArchived) -> None:
        """Say where the chat went; an archived open chat gives way to the next one, ready to type in."""
        chat, chat_list = event.chat, self.query_one(ChatList)
        if not chat.archived:
            self.notify(f"“{chat.title}” is back in the chat list", title="Chat unarchived", markup=False)
            self._run(self.library.load(self.show_archived, select=self._chat_id()))
            return
        self.notify(f"“{chat.title}” is archived: F5 lists archived chats, F4 on it brings it back",
                    title="Chat archived", markup=False)
        if self.show_archived:
            chat_list.update_chat(chat)
            return
        following = None
        if self._chat_id() == chat.id:
            following = chat_list.neighbour(chat.id)
            if following is None:
                await self.pane.close_chat()
            else:
                self._run(self.library.open(following))
            self.query_one(PromptInput).focus()
        self._run(self.library.load(self.show_archived, select=following))

    @on(m.ChatDeleted)
    async def _deleted(self, event: m.ChatDeleted) -> None:
        if self._chat_id() == event.chat_id:
            await self.pane.close_chat()
        self._run(self.library.load(self.show_archived))
        self.query_one(PromptInput).focus()  # the screen says "type below": keys must go there

    @on(m.ChatExported)
    def _exported(self, event: m.ChatExported) -> None:
        self.notify("\n".join(str(p) for p in event.paths), title="Chat exported")

    # -------------------------------------------------------------------- model and turns
    @on(m.ModelLoaded)
    def _model_loaded(self, event: m.ModelLoaded) -> None:
        model = event.engine.model
        self.sessions.attach_engine(event.engine)
        self.pane.model_name = model.name
        self.query_one(StatusLine).ready(model.name, str(model.device))
        if event.seconds is not None:
            self.notify(f"{model.name} loaded in {event.seconds:.1f} s", title="Model ready")

    @on(m.ModelLoadFailed)
    def _model_failed(self, event: m.ModelLoadFailed) -> None:
        self.query_one(StatusLine).failed(event.error)
        self.sessions.model_failed(event.error)

    @on(m.UserMessageStored)
    def _user_message(self, event: m.UserMessageStored) -> None:
        self._mark(event.chat_id)
        self._run(self.library.load(self.show_archived))  # the chat moves to the top

    @on(m.GenerationQueued)
    @on(m.GenerationStarted)
    @on(m.GenerationFinished)
    @on(m.GenerationFailed)
    def _turn_changed(self, event: m.GenerationStarted) -> None:
        self._mark(event.chat_id)
