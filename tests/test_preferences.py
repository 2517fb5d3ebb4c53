"""Preferences: round trip, default location, atomic writes, and never crashing on a bad file."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from app.tui import preferences as prefs_mod
from app.tui.preferences import Preferences, PreferencesWarning, default_path, load_preferences, save_preferences


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """Every test gets its own config folder: nothing touches the real user config."""
    folder = tmp_path / "config"
    monkeypatch.setenv("BATON_CONFIG_DIR", str(folder))
    return folder


def test_defaults():
    p = Preferences()
    assert (p.theme, p.show_panel, p.panel_interval_s) == ("baton-dark", True, 0.5)


def test_missing_file_gives_defaults_without_warning(config_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_preferences() == Preferences()
    assert not config_dir.exists()


def test_round_trip_in_config_dir(config_dir):
    save_preferences(Preferences(theme="baton-ember", show_panel=False, panel_interval_s=1.0))
    assert default_path() == config_dir / "preferences.json"
    assert json.loads(default_path().read_text()) == {"theme": "baton-ember", "show_panel": False,
                                                      "panel_interval_s": 1.0}
    assert load_preferences() == Preferences(theme="baton-ember", show_panel=False, panel_interval_s=1.0)


def test_explicit_path(tmp_path):
    path = tmp_path / "deep" / "er" / "prefs.json"
    save_preferences(Preferences(theme="nord"), path)
    assert load_preferences(path).theme == "nord"


def test_default_path_without_env_is_platformdirs(monkeypatch):
    monkeypatch.delenv("BATON_CONFIG_DIR")
    monkeypatch.setattr(prefs_mod.platformdirs, "user_config_dir", lambda app, appauthor=None: f"/cfg/{app}")
    assert str(default_path()) == os.path.join("/cfg/baton", "preferences.json")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe garbage", ""])
def test_corrupt_file_gives_defaults_and_a_warning(content):
    path = default_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(content.encode("latin-1"))
    with pytest.warns(PreferencesWarning, match="using defaults"):
        assert load_preferences() == Preferences()


def test_unreadable_file_gives_defaults_and_a_warning():
    path = default_path()
    path.mkdir(parents=True)  # a folder where the file should be: reading it is an OSError on every OS
    with pytest.warns(PreferencesWarning, match="cannot read"):
        assert load_preferences() == Preferences()


def test_unknown_keys_ignored_and_bad_fields_keep_their_default():
    path = default_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"theme": "baton-light", "show_panel": "yes", "panel_interval_s": 0,
                                "from_the_future": [1]}))
    with pytest.warns(PreferencesWarning) as record:
        p = load_preferences()
    assert p == Preferences(theme="baton-light", show_panel=True, panel_interval_s=0.5)
    assert {str(w.message).split("=")[0] for w in record} == {"preferences: ignoring show_panel",
                                                              "preferences: ignoring panel_interval_s"}


def test_save_is_atomic_and_leaves_no_temp_files(monkeypatch):
    save_preferences(Preferences(theme="baton-light"))
    path = default_path()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(prefs_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_preferences(Preferences(theme="baton-ember"))
    assert load_preferences().theme == "baton-light"  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["preferences.json"]
