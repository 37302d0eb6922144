"""The error a slash command raises when it was typed wrong; its message is the footer's hint.

Its own module so that the command table (commands.py) and the handlers it names can both use
it without importing each other.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A command typed wrong; the message is a one-line hint."""
