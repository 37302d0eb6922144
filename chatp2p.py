"""ChatP2P command line and composition root (placeholder, filled in next)."""


def main_app() -> int:
    return 0


def main_daemon() -> int:
    return 0


def main_ctl() -> int:
    return 0
