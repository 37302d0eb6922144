"""Pure codecs: bytes <-> objects, no I/O. The lowest layer; imports nothing of the project above it."""
