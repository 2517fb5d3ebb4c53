"""The TUI's widgets, one a module."""
