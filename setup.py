"""Install ChatP2P: the core as `chatp2p_core` (source in lib/), the UI as `chatp2p_ui` (ui/)."""
from setuptools import setup

setup(
    name="chatp2p",
    version="0.1.0",
    description="Peer-to-peer terminal chat with post-quantum end-to-end encryption",
    python_requires=">=3.11",
    py_modules=["chatp2p"],
    packages=["chatp2p_core", "chatp2p_core.codec", "chatp2p_core.crypto", "chatp2p_core.net",
              "chatp2p_core.services", "chatp2p_core.services.transfer", "chatp2p_core.api",
              "chatp2p_core.store", "chatp2p_ui", "chatp2p_ui.views"],
    package_dir={"chatp2p_core": "lib", "chatp2p_ui": "ui"},
    scripts=["bin/chatp2p", "bin/chatp2pd", "bin/chatp2pctl"],
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
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "import-linter>=2.1", "jsonschema>=4.18"]},
)
