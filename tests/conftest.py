"""pytest configuration; this file also makes tests/ importable (`from daemon import Daemon`).

The suite starts hundreds of Python processes (daemons, API helpers in namespaces, chatp2pctl,
the benches). With PYTHONDONTWRITEBYTECODE set, as many environments and container images do,
each of them compiled the project and its libraries from source again: about 0.3 s of every
daemon's start. For the run, those processes keep their bytecode in a directory of their own
(PYTHONPYCACHEPREFIX), which is removed at the end: still nothing is written next to the sources.
Processes run as another user (test_transfer_fs.AS_NOBODY) leave it out: they may not write it,
and with it Python would pass over the system's own compiled standard library.
"""

import os
import shutil
import sys
import tempfile

_PYCACHE = None
_DONT_WRITE = None


def pytest_configure(config):
    global _PYCACHE, _DONT_WRITE
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
        _PYCACHE = tempfile.mkdtemp(prefix="chatp2p-tests-pycache-")
        os.chmod(_PYCACHE, 0o755)   # daemons run as nobody read it (and may not write to it)
        os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE
        _DONT_WRITE = os.environ.pop("PYTHONDONTWRITEBYTECODE")
        sys.pycache_prefix = _PYCACHE   # this process's later imports (the test modules) too
        sys.dont_write_bytecode = False


def pytest_unconfigure(config):
    if _PYCACHE is not None:
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ["PYTHONDONTWRITEBYTECODE"] = _DONT_WRITE
        shutil.rmtree(_PYCACHE, ignore_errors=True)
