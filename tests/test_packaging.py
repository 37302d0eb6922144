"""What a user installs: one version everywhere, the license and metadata, the default conf
carried by the package, grouped help with defaults, shell completion from the parsers."""

import pathlib
import shutil
import subprocess
import sys
import tempfile

import chatp2p_core

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = {"chatp2p": "main_app", "chatp2pd": "main_daemon", "chatp2pctl": "main_ctl"}


def program(name, *args, **kwargs):
    code = f"import sys, chatp2p; sys.exit(chatp2p.{PROGRAMS[name]}())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, **kwargs)


def setup_py(*args):
    return subprocess.run([sys.executable, "setup.py", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=True).stdout.strip().splitlines()


def test_every_program_prints_the_one_version():
    assert setup_py("--version")[-1] == chatp2p_core.__version__
    for name in PROGRAMS:
        proc = program(name, "--version")
        assert proc.returncode == 0 and proc.stdout == f"{name} {chatp2p_core.__version__}\n", (name, proc)


def test_license_and_metadata():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert setup_py("--license")[-1] == "MIT"
    classifiers = setup_py("--classifiers")
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert setup_py("--url")[-1].startswith("https://")


def test_print_config_writes_the_commented_conf_the_installed_package_carries():
    shipped = (ROOT / "conf" / "chatp2p.conf").read_text()
    for name in ("chatp2p", "chatp2pd"):
        proc = program(name, "--print-config")
        assert proc.returncode == 0 and proc.stdout == shipped, name
    with tempfile.TemporaryDirectory() as target:
        subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", target],
                       cwd=ROOT, check=True, capture_output=True, timeout=300)
        carried = pathlib.Path(target, "chatp2p_core", "chatp2p.conf")
        assert carried.is_file() and not carried.is_symlink() and carried.read_text() == shipped
        subprocess.run([sys.executable, "setup.py", "-q", "clean", "--all"], cwd=ROOT, capture_output=True,
                       timeout=60)


def test_help_is_grouped_with_defaults_and_choices():
    text = program("chatp2pd", "--help").stdout
    for title in ("control API ([ipc] in the conf file)", "peer-to-peer network ([p2p] in the conf file)",
                  "file transfers ([files] in the conf file)"):
        assert title in text, title
    flat = " ".join(text.split())
    assert "(default: 8889; env CHATP2P_IPC_PORT)" in flat
    assert "--log-level {debug,info,warning,error}" in flat
    for placeholder in (" STR", "CHOICE", "OPTPORT", " FLOAT"):
        assert placeholder not in text, placeholder
    assert program("chatp2pd", "--log-level", "LOUD").returncode == 2


def test_completion_scripts_are_generated_from_the_parsers():
    for name in PROGRAMS:
        bash = program(name, "--print-completion", "bash").stdout
        assert bash and subprocess.run(["bash", "-n"], input=bash, text=True).returncode == 0, name
        assert "--print-config" in bash or name == "chatp2pctl"
        zsh = program(name, "--print-completion", "zsh").stdout
        assert zsh.startswith(f"#compdef {name}"), name
    bash = program("chatp2pctl", "--print-completion", "bash").stdout
    for verb in ("send-file", "history", "search", "contacts", "group", "send-message"):
        assert verb in bash, verb
    if shutil.which("zsh"):
        zsh = program("chatp2pctl", "--print-completion", "zsh").stdout
        assert subprocess.run(["zsh", "-n"], input=zsh, text=True).returncode == 0
