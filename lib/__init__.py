"""ChatP2P core: everything but the UI. Installed as the package `chatp2p_core`."""

__version__ = "0.1.0"
