"""The installed package, not the source tree: what `pip install .` puts on disk must run."""

import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_non_editable_install_has_every_module():
    """The tests import from the editable source tree; a package missing from setup.py would
    only show when a user installs (`pip install .`, the README's command)."""
    with tempfile.TemporaryDirectory() as target:
        # What a wheel would contain, laid out by setuptools from setup.py (offline: no pip, no index).
        subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", target],
                       cwd=ROOT, check=True, capture_output=True, timeout=300)
        installed = pathlib.Path(target)
        assert not (installed / "lib").exists() and not (installed / "ui").exists()
        for source, package in ((ROOT / "lib", "chatp2p_core"), (ROOT / "ui", "chatp2p_ui")):
            wanted = {p.relative_to(source) for p in source.rglob("*.py")}
            present = {p.relative_to(installed / package) for p in (installed / package).rglob("*.py")}
            assert wanted <= present, f"{package} lacks {sorted(map(str, wanted - present))}"
        env = dict(os.environ, PYTHONPATH=target)
        code = "import chatp2p, chatp2p_ui.app, chatp2p_core.node, chatp2p_core.api.commands; print('ok')"
        done = subprocess.run([sys.executable, "-c", code], cwd=target, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.stdout.strip() == "ok", done.stderr
        assert (installed / "chatp2p.py").exists()
        subprocess.run([sys.executable, "setup.py", "-q", "clean", "--all"], cwd=ROOT, capture_output=True,
                       timeout=60)


def test_the_app_log_file_is_private():
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp, "app.log")
        code = ("import chatp2p, logging; chatp2p._setup_logging('info', %r); "
                "logging.getLogger('x').info('hello')") % str(log)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
        assert log.stat().st_mode & 0o777 == 0o600
        assert "hello" in log.read_text()
