"""Post-quantum identity, handshake, sessions and sealed envelopes. Uses only the codecs below it."""
