"""The TUI's screens, one a module."""
