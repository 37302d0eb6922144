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

def pytest_configure(config):
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
        pycache = tempfile.mkdtemp(prefix="chatp2p-tests-pycache-")
        os.chmod(pycache, 0o755)   # daemons run as nobody read it (and may not write to it)
        os.environ["PYTHONPYCACHEPREFIX"] = pycache
        config.chatp2p_bytecode = (pycache, os.environ.pop("PYTHONDONTWRITEBYTECODE"))
        sys.pycache_prefix = pycache   # this process's later imports (the test modules) too
        sys.dont_write_bytecode = False


def pytest_unconfigure(config):
    saved = getattr(config, "chatp2p_bytecode", None)
    if saved is not None:
        pycache, dont_write = saved
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ["PYTHONDONTWRITEBYTECODE"] = dont_write
        shutil.rmtree(pycache, ignore_errors=True)
