"""The project's layout rules, read from the source with `ast` and checked in fresh interpreters.

- No import cycle anywhere (deferred and `TYPE_CHECKING` imports count too).
- `backend` imports neither `app` nor `storage`; `storage` imports no torch, no `backend`, no `app`.
- Only `app/tui` imports Textual; `app/chat` imports no argparse and none of the front ends; `app/jobs` no front
  end; `app/tui` not the CLI; `app/server` (HTTP) neither Textual, argparse, the CLI nor the TUI, and only it
  (and the CLI's `serve` command, when it runs) imports the HTTP stack (FastAPI, Starlette, uvicorn,
  sse-starlette, prometheus-client).
- `app/remote` (the remote engine) imports `app/chat`, `backend`'s public names, `openai` and
  prometheus_client's parser; no front end, job runner, server or store. Of the rest only the CLI's
  `engine_options` imports it (deferred, for `--backend`).
- The app imports the engine only through `backend`'s public names, never a submodule.
- `baton --help`, `baton --version`, `baton jobs list` and `baton jobs show` never import torch or the HTTP stack
  (they print at once); `import app.server` imports no torch (the engine is handed to it); nor does importing
  the TUI and making its app (its first frame comes before torch: the engine is made in a thread once it is
  drawn, `tests/test_tui_start.py`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "backend", "storage", "themes")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports (absolute names; `from X import Y` gives X.Y when that is a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _importers(of: str, within: str) -> list[str]:
    """`(importer -> imported)` lines for modules under `within` that import something under `of`."""
    return sorted(f"{m} -> {i}" for m, imps in IMPORTS.items() if _under(m, within) for i in imps if _under(i, of))


def test_the_project_has_no_import_cycle():
    graph = {m: {i for i in imps if i in MODULES and i != m} for m, imps in IMPORTS.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_relative_and_deferred_imports():
    assert "app.chat.batch_file" in IMPORTS["app.chat.run_request"]  # from .batch_file import ...
    assert "app.tui" in IMPORTS["app.cli.main"]  # the TUI command imports it when it runs
    assert "app.jobs" in IMPORTS["app.tui.screens.jobs"]  # from ...jobs import ...
    assert "app.server.serve" in IMPORTS["app.cli.serve_cmd"]  # deferred, inside the handler


@pytest.mark.parametrize("within,forbidden", [
    ("backend", "app"), ("backend", "storage"), ("backend", "textual"),
    ("storage", "torch"), ("storage", "transformers"), ("storage", "backend"), ("storage", "app"),
    ("storage", "textual"),
    ("app.chat", "textual"), ("app.chat", "argparse"), ("app.chat", "app.cli"), ("app.chat", "app.tui"),
    ("app.chat", "app.jobs"),
    ("app.cli", "textual"),
    ("app.jobs", "textual"), ("app.jobs", "argparse"), ("app.jobs", "app.cli"), ("app.jobs", "app.tui"),
    ("app.tui", "app.cli"),
    ("app.server", "textual"), ("app.server", "argparse"), ("app.server", "app.cli"), ("app.server", "app.tui"),
    ("app.chat", "app.server"), ("app.jobs", "app.server"),
    ("app.remote", "textual"), ("app.remote", "argparse"), ("app.remote", "app.cli"), ("app.remote", "app.tui"),
    ("app.remote", "app.jobs"), ("app.remote", "app.server"), ("app.remote", "storage"),
    ("app.chat", "app.remote"), ("app.jobs", "app.remote"), ("app.server", "app.remote"), ("app.tui", "app.remote"),
])
def test_import_boundaries(within, forbidden):
    assert _importers(forbidden, within) == []


def test_only_the_tui_imports_textual():
    users = {m for m, imps in IMPORTS.items() if any(_under(i, "textual") for i in imps)}
    assert users and all(_under(m, "app.tui") or _under(m, "themes") for m in users), sorted(users)


HTTP_STACK = ("fastapi", "starlette", "uvicorn", "sse_starlette", "prometheus_client", "multipart")


def test_the_cli_imports_the_server_only_in_its_serve_command():
    assert {line.split(" -> ")[0] for line in _importers("app.server", "app.cli")} == {"app.cli.serve_cmd"}


def test_only_the_server_imports_the_http_stack():
    """... except `app.remote.stats`, which parses a vLLM server's `/metrics` with prometheus_client's parser."""
    users = {m: {p for p in HTTP_STACK for i in imps if _under(i, p)} for m, imps in IMPORTS.items()}
    users = {m: found for m, found in users.items() if found}
    assert users and all(_under(m, "app.server") or (m == "app.remote.stats" and found == {"prometheus_client"})
                         for m, found in users.items()), sorted(users)


def test_the_cli_imports_the_remote_engine_only_in_start_engine():
    assert {line.split(" -> ")[0] for line in _importers("app.remote", "app.cli")} == {"app.cli.engine_options"}
    assert "openai" not in IMPORTS["app.cli.engine_options"]


def test_the_app_uses_only_the_engines_public_api():
    assert [line for line in _importers("backend", "app") if not line.endswith("-> backend")] == []


@pytest.mark.parametrize("package,forbidden", [
    ("backend", ("textual", "app", "storage", "aiosqlite")),
    ("storage", ("torch", "textual", "app", "backend", "transformers")),
])
def test_engine_and_storage_keep_their_import_boundaries(package, forbidden):
    code = (f"import sys, {package}, {package}.{'memory' if package == 'backend' else 'store'}; "
            f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r})); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def _loaded_after(code: str, tmp_path: Path) -> set[str]:
    """Top-level modules loaded after running `code` (which may print) in a fresh interpreter."""
    script = f"import sys\n{code}\nprint('LOADED', sorted({{m.split('.')[0] for m in sys.modules}}))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={"BATON_CONFIG_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED"))
    return set(ast.literal_eval(line.removeprefix("LOADED ")))


def test_the_core_and_the_cli_load_without_textual_or_torch(tmp_path):
    loaded = _loaded_after("import app.chat.run_request, app.chat.recorder, app.cli, app.jobs", tmp_path)
    assert not loaded & {"textual", "torch", "transformers", *HTTP_STACK}, sorted(loaded)


def test_the_server_loads_without_textual_or_torch(tmp_path):
    loaded = _loaded_after("import app.server, app.server.serve", tmp_path)
    assert "fastapi" in loaded and not loaded & {"textual", "torch", "transformers"}, sorted(loaded)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["jobs", "--help"], ["jobs", "list"],
                                  ["jobs", "show", "1"]])
def test_help_and_job_listings_never_import_torch(argv, tmp_path):
    db = tmp_path / "jobs.db"
    if argv[0] == "jobs" and argv[-1] != "--help":
        argv = [*argv, "--db", str(db)]
    code = (f"from app.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n")
    loaded = _loaded_after(code, tmp_path)
    assert "storage" in loaded or argv[-1] in ("--help", "--version")  # the job commands did read the store
    assert not loaded & {"torch", "transformers", "textual", *HTTP_STACK}, sorted(loaded)


def test_the_tui_and_its_app_load_without_torch(tmp_path):
    code = ("from app.tui import BatonApp\n"
            "import app.tui.screens.chat, app.tui.screens.jobs, app.tui.widgets.live_panel, app.tui.engine_loader\n"
            "from backend import DeviceMemory, EngineConfig, read_device_memory\n"
            "app = BatonApp(config=EngineConfig(model='random:tiny'))\n"
            "assert app.engine is None\n")
    loaded = _loaded_after(code, tmp_path)
    assert "textual" in loaded and not loaded & {"torch", "transformers"}, sorted(loaded)
