"""Install ChatP2P: the core as `chatp2p_core` (source in lib/), the UI as `chatp2p_ui` (ui/)."""
import pathlib
import re

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent
# One version number: lib/__init__.py's, which every program's --version prints.
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "lib" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="chatp2p",
    version=VERSION,
    description="Peer-to-peer terminal chat with post-quantum end-to-end encryption",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    url="https://github.com/chatp2p/chatp2p",
    license="MIT",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: Console :: Curses",
        "Intended Audience :: End Users/Desktop",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Topic :: Communications :: Chat",
        "Topic :: Security :: Cryptography",
    ],
    python_requires=">=3.11",
    py_modules=["chatp2p"],
    packages=["chatp2p_core", "chatp2p_core.codec", "chatp2p_core.crypto", "chatp2p_core.net",
              "chatp2p_core.services", "chatp2p_core.services.transfer", "chatp2p_core.services.groups",
              "chatp2p_core.api",
              "chatp2p_core.store", "chatp2p_ui", "chatp2p_ui.views"],
    package_dir={"chatp2p_core": "lib", "chatp2p_ui": "ui"},
    # lib/chatp2p.conf is a link to conf/chatp2p.conf: the installed package carries the
    # commented default conf that `chatp2p --print-config` writes out.
    package_data={"chatp2p_core": ["chatp2p.conf"]},
    scripts=["bin/chatp2p", "bin/chatp2pd", "bin/chatp2pctl"],
    data_files=[("share/chatp2p/systemd", ["conf/systemd/chatp2pd.service",
                                           "conf/systemd/chatp2p-rendezvous.service"])],
    install_requires=[
        "gevent>=24.2",
        "pyzmq>=25",
        # lib/pqc.py uses private pycryptodome APIs (Hybrid._construct, MLKEMKey._encaps ...):
        # pinned to the minor series it was checked against.
        "pycryptodome>=4.4,<4.5",
        "liboqs-python>=0.12",
        "pystun3>=2.0",
        "urwid>=2.6",
        "cryptography>=42",
        # Mainline DHT and the router port mapper (NAT-PMP/PCP, UPnP-IGD) of online mode.
        "libtorrent>=2.1",
        "segno>=1.5",        # QR codes of IDs in the terminal (chatp2pctl id --qr, /myid --qr)
        "shtab>=1.6",        # bash/zsh completion generated from the argument parsers
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "import-linter>=2.1", "jsonschema>=4.18"]},
)
