"""pytest configuration: none needed; this file makes tests/ importable (`from daemon import Daemon`)."""
