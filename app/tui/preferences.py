"""User preferences of the TUI (theme, panels), kept as JSON in the user config folder.

The file is `preferences.json` in `$BATON_CONFIG_DIR` when set, else in platformdirs'
`user_config_dir("baton")`. Loading never fails: a missing file gives the defaults, a corrupt or unreadable
one gives the defaults plus a `PreferencesWarning`, a bad value for one field keeps that field's default (and
warns), and unknown keys are ignored. Saving writes a temporary file beside the target and `os.replace`s it,
so a crash mid-write never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["Preferences", "PreferencesWarning", "default_path", "load_preferences", "save_preferences"]

FILE_NAME = "preferences.json"


class PreferencesWarning(UserWarning):
    """The preferences file could not be used as is (corrupt, unreadable, or a field of the wrong type)."""


@dataclass
class Preferences:
    """What the TUI remembers between runs.

    Attributes:
        theme: Textual theme name (ours or a built-in); the app should fall back to the default if it is not
            registered.
        show_panel: whether the live GPU memory and batch panel is shown.
        panel_interval_s: how often the live panel refreshes (s, 0.1 to 10).
    """

    theme: str = "baton-dark"
    show_panel: bool = True
    panel_interval_s: float = 0.5


def default_path() -> Path:
    """`$BATON_CONFIG_DIR/preferences.json`, else `<platformdirs user config dir for baton>/preferences.json`."""
    folder = os.environ.get("BATON_CONFIG_DIR") or platformdirs.user_config_dir("baton", appauthor=False)
    return Path(folder) / FILE_NAME


def load_preferences(path: Path | None = None) -> Preferences:
    """Read preferences from `path` (default `default_path()`). Never raises.

    Returns:
        The stored preferences; defaults for a missing file, and for a file or field that cannot be used
        (with a `PreferencesWarning` naming the problem). Unknown keys are ignored.
    """
    path = Path(path) if path is not None else default_path()
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Preferences()
    except (OSError, UnicodeDecodeError) as exc:
        warnings.warn(f"preferences: cannot read {path} ({exc}); using defaults", PreferencesWarning, stacklevel=2)
        return Preferences()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        warnings.warn(f"preferences: {path} is not valid JSON ({exc}); using defaults", PreferencesWarning,
                      stacklevel=2)
        return Preferences()
    if not isinstance(data, dict):
        warnings.warn(f"preferences: {path} holds {type(data).__name__}, not an object; using defaults",
                      PreferencesWarning, stacklevel=2)
        return Preferences()
    return Preferences(**{f.name: _field_value(f, data) for f in dataclasses.fields(Preferences)})


def save_preferences(prefs: Preferences, path: Path | None = None) -> None:
    """Write `prefs` as JSON to `path` (default `default_path()`), atomically; creates the folder.

    Raises:
        OSError: the folder or file cannot be written (the previous file, if any, is left intact).
    """
    path = Path(path) if path is not None else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dataclasses.asdict(prefs), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _field_value(field: dataclasses.Field, data: dict):
    """The stored value of one field if it has the right type, else the default (with a warning)."""
    default = field.default
    if field.name not in data:
        return default
    value = data[field.name]
    if field.name == "panel_interval_s":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.1 <= value <= 10:
            return float(value)
    elif type(value) is type(default):
        return value
    warnings.warn(f"preferences: ignoring {field.name}={value!r}; using {default!r}", PreferencesWarning,
                  stacklevel=3)
    return default
