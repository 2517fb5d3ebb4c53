"""The Textual app: opens the store, applies the saved theme, shows the chat screen, reports failed workers.

The screens and widgets do the work (`app/tui/screens/`, `app/tui/widgets/`); `Sessions` runs the turns. This
module only wires them together and owns what lives as long as the app: the store, the engine, the
preferences and the job runner (handed to the screens that use it).

Nothing here imports torch: the first frame is drawn before it, and the chat screen then makes and starts the
engine in a thread (`engine_loader`); `BatonApp.engine` is None until `ModelLoaded`.

    run_tui(EngineConfig(model="random:tiny"), db_path="chats.db")   # what `baton` does
    BatonApp(engine=started_engine, db_path=tmp / "chats.db")          # what tests do (run_test / Pilot)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import App, ScreenStackError
from textual.worker import Worker, WorkerState

from backend import EngineConfig, freeze_startup_objects, unfreeze_startup_objects
from storage import StorageError, Store
from themes import register_themes

from ..jobs import JobProgress, JobRunner
from .messages import JobProgressed, ModelLoaded, PanelToggled
from .preferences import PreferencesWarning, load_preferences, save_preferences
from .screens.chat import ChatScreen

if TYPE_CHECKING:
    from backend import Engine

FAILURE_TITLES = {"generation": "Answer failed", "model": "Model failed to load", "store": "Storage error",
                  "search": "Search failed", "jobs": "Background jobs failed",
                  "jobs-view": "Storage error"}


class BatonApp(App[None]):
    """Baton's TUI.

    Args:
        engine: an engine to use; started ones stay the caller's, an unstarted one is started (in a thread)
            and shut down by the app. Default: `Engine(config)`, made in a thread once the first frame is drawn.
        config: the engine configuration when no engine is given (default `EngineConfig()`).
        store: an open store (stays the caller's); else the app opens `db_path` and closes it at exit.
        db_path: the history database (default `storage.default_db_path()`).
        theme: a theme name for this run, overriding the saved one (not saved unless changed in the app).
        listener: an `app.server.embedded.EmbeddedServer` (`baton --listen`): the HTTP API on the same engine,
            started once the model is loaded, stopped before the engine.
    Attributes:
        engine: the engine given, or the one made from `config` once it is loaded (None until then).
    """

    CSS_PATH = "baton.tcss"
    TITLE = "Baton"

    def __init__(self, *, engine: Engine | None = None, config: EngineConfig | None = None,
                 store: Store | None = None, db_path: str | os.PathLike[str] | None = None,
                 theme: str | None = None, listener: Any = None) -> None:
        super().__init__()
        self.listener = listener
        self.engine: Engine | None = engine
        self.config = engine.config if engine is not None else (config or EngineConfig())
        self._owns_engine = engine is None or not engine.started
        self.store = store
        self._owns_store = store is None
        self._frozen_gc = False  # start-up objects frozen out of the collector's scans (`_freeze_startup_objects`)
        self.db_path = db_path
        with warnings.catch_warnings(record=True) as caught:  # shown as notifications, not under the TUI
            warnings.simplefilter("always", PreferencesWarning)
            self.preferences = load_preferences()
        self._preference_warnings = [str(w.message) for w in caught if issubclass(w.category, PreferencesWarning)]
        self._theme_override = theme
        self._remember_theme = False
        self.startup_error: str | None = None
        self._chat_screen: ChatScreen | None = None
        self.job_runner: JobRunner | None = None  # the stored job queue's runner (runs once the engine is ready)
        self._jobs_worker: Worker | None = None
        self._quitting = False

    @property
    def chat_screen(self) -> ChatScreen | None:
        """The main screen, once shown."""
        return self._chat_screen

    async def on_mount(self) -> None:
        """Register the themes and apply the saved one, open the store if needed, show the chat screen."""
        register_themes(self)
        for warning in self._preference_warnings:
            self.notify(warning, title="Preferences", severity="warning")
        self._apply_theme(self._theme_override or self.preferences.theme)
        self._remember_theme = True
        if self.store is None:
            try:
                self.store = await Store.open(self.db_path)
            except StorageError as exc:
                self.startup_error = str(exc)
                self.exit(return_code=2, message=str(exc))
                return
        self.job_runner = JobRunner(self.store, self.engine,
                                    on_progress=self._job_progressed)
        self._chat_screen = ChatScreen(self.store, self.engine, self.job_runner, config=self.config,
                                       show_panel=self.preferences.show_panel,
                                       panel_interval=self.preferences.panel_interval_s)
        await self.push_screen(self._chat_screen)

    def _apply_theme(self, name: str) -> None:
        if name in self.available_themes:
            self.theme = name
        else:
            self.notify(f"Unknown theme {name!r}: using {self.theme}", severity="warning")

    def watch_theme(self, name: str) -> None:
        """Remember a theme chosen in the app (e.g. the palette's "Theme")."""
        if self._remember_theme and name != self.preferences.theme:
            self.save_preferences(theme=name)

    def save_preferences(self, **changes: object) -> None:
        """Change and save preferences; a file that cannot be written is reported, not fatal."""
        self.preferences = dataclasses.replace(self.preferences, **changes)
        try:
            save_preferences(self.preferences)
        except OSError as exc:
            self.notify(f"Cannot save preferences: {exc}", severity="warning")

    @on(PanelToggled)
    def _panel_toggled(self, event: PanelToggled) -> None:
        if event.shown != self.preferences.show_panel:
            self.save_preferences(show_panel=event.shown)

    @on(ModelLoaded)
    def _freeze_startup_objects(self, event: ModelLoaded) -> None:
        """Everything loaded so far (Textual, the tokenizer, the app) leaves the garbage collector's scans: full
        collections while a chat streamed took 200-360 ms each, the chat's longest gaps (`backend/process_gc.py`).
        Undone when the app unmounts."""
        self._frozen_gc = True
        freeze_startup_objects()

    @on(ModelLoaded)
    def _start_jobs(self, event: ModelLoaded) -> None:
        """The engine is ready: run queued background jobs (and those submitted later) while the app is open."""
        self.engine = event.engine
        if self.job_runner is not None:
            self.job_runner.engine = event.engine
        if self.job_runner is None or self._jobs_worker is not None:
            return
        self._jobs_worker = self.run_worker(self.job_runner.run_queued(watch=True), name="background jobs",
                                            group="jobs", exit_on_error=False)
        if self.listener is not None:
            self.run_worker(self._listen(event.engine), name="listen", group="listen", exit_on_error=False)

    async def _listen(self, engine: Any) -> None:
        """Serve the HTTP API on the loaded engine (`--listen`), sharing the app's job runner."""
        url = await self.listener.start(engine, self.store, self.job_runner)
        self.notify(f"OpenAI API on {url}/v1", title="Listening")

    def _job_progressed(self, progress: JobProgress) -> None:
        """Tell the active screen that a job moved on (the jobs screen shows it; the others ignore it)."""
        try:
            self.screen.post_message(JobProgressed(progress))
        except ScreenStackError:  # no screen (starting or closing)
            pass

    async def stop_jobs(self) -> None:
        """Stop the job runner: jobs it runs go back to `queued` (their finished items are kept)."""
        worker, self._jobs_worker = self._jobs_worker, None
        if worker is not None:  # Textual may have cancelled it already: wait for its clean-up all the same
            worker.cancel()
            try:
                await asyncio.wait_for(worker.wait(), timeout=10)
            except Exception:  # WorkerCancelled (expected), or a runner that failed (already notified)
                pass

    def action_quit(self) -> None:
        """Quit (Ctrl+Q): say "Closing…" at once, and close while it shows: answers in flight are stored as
        `interrupted` with their text so far, running jobs go back to the queue, then the app exits. Nothing
        waits for the engine's step in flight."""
        if self._quitting:
            return
        self._quitting = True
        self.notify("answers in flight are saved", title="Closing…", timeout=30)
        self.run_worker(self._close(), name="close", group="close", exit_on_error=False)

    async def _close(self) -> None:
        try:
            await self.stop_jobs()
            if self._chat_screen is not None:  # their workers' cancellation stores the answers as interrupted
                self.workers.cancel_group(self, "generation")
                await self._chat_screen.sessions.close()
        finally:
            self.exit()

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker (model load, storage, an answer) becomes a notification."""
        if event.state == WorkerState.ERROR:
            title = FAILURE_TITLES.get(event.worker.group, "Error")
            self.notify(str(event.worker.error), title=title, severity="error", timeout=10)

    async def on_unmount(self) -> None:
        """Store what is streaming as interrupted, stop the job runner, then stop the engine and close the
        store if they are ours. The engine is not waited for: its thread ends after its step in flight (a
        prefill can take seconds on a CPU), and nothing it would still send is wanted. A `--listen` server
        stops first."""
        if self.listener is not None:
            await self.listener.stop()
        await self.stop_jobs()
        if self._chat_screen is not None:  # the screens are closed by now; their turns are not
            await self._chat_screen.sessions.close()
        if self._owns_engine and self.engine is not None:
            self.engine.shutdown(timeout=0)
        if self._owns_store and self.store is not None:
            await self.store.close()
        if self._frozen_gc:
            unfreeze_startup_objects()


def run_tui(config: EngineConfig | None, db_path: str | os.PathLike[str] | None = None, theme: str | None = None,
            engine: Any = None, listen: tuple[str, int, str | None] | None = None) -> int:
    """Run the TUI until the user quits. Returns the exit status.

    `engine`, when given (an unstarted `ChatEngine`, e.g. `--backend`'s remote one), is used instead of one
    made from `config`; the app starts it in a thread and shuts it down. `listen` (host, port, API key or
    None) also serves the engine's OpenAI API there (`--listen`): the address is checked and bound first, a
    non-loopback host without a key or an address in use being one `baton: error:` line and status 2.

    The store is opened first: a database that cannot be used (corrupt, locked, not SQLite...) is one
    `baton: error: <file>: <why>` line on stderr and status 2, before any screen is drawn.
    """
    listener = None
    if listen is not None:
        from ..server.embedded import EmbeddedServer  # the HTTP stack, only with --listen

        try:
            listener = EmbeddedServer.bind(*listen)
        except (ValueError, OSError) as exc:
            print(f"baton: error: --listen: {exc}", file=sys.stderr)
            return 2

    async def main() -> int:
        """Open the store, run the app, close the store."""
        try:
            store = await Store.open(db_path)
        except StorageError as exc:
            print(f"baton: error: {exc}", file=sys.stderr)
            return 2
        try:
            app = BatonApp(engine=engine, config=config, store=store, theme=theme, listener=listener)
            await app.run_async()
        finally:
            await store.close()
        if app.return_code:
            print(f"baton: error: {app.startup_error or 'the app failed'}", file=sys.stderr)
        return app.return_code or 0

    return asyncio.run(main())


def theme_names() -> list[str]:
    """Every theme `--theme` accepts (Textual's built-in ones and Baton's)."""
    from textual.theme import BUILTIN_THEMES

    from themes import BATON_THEMES

    return sorted({*BUILTIN_THEMES, *(t.name for t in BATON_THEMES)})

