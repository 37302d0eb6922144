"""The local control API: the command table, the JSON-over-TCP server, its handlers and the
command-line client. The top layer: it translates requests into service calls."""
