"""ChatP2P terminal UI (urwid). Installed as the package `chatp2p_ui`."""
