"""urwid widgets of the UI. They read the model and call back into the controller; no I/O."""
