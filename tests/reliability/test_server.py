"""Server defaults: ``streamlit run app.py`` listens on loopback only unless the
operator says otherwise, and the README says how (and what that exposes)."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out = []
    for name, size in (("tcp", 4), ("tcp6", 16)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            out.append(ipaddress.ip_address(raw))
    return out


def test_config_binds_to_localhost():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] in ("localhost", "127.0.0.1")


def test_streamlit_run_without_flags_listens_on_loopback_only(tmp_path):
    """Start the app the README's way (only the port differs) and read the kernel's
    socket table: nothing may listen on 0.0.0.0, :: or an outside address."""
    port = _free_port()
    env = dict(os.environ, NATGRAD_COURSE_DB=str(tmp_path / "p.sqlite3"))
    log = open(tmp_path / "streamlit.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise AssertionError(f"streamlit did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        addresses = _listening(port)
        assert addresses, f"nothing listens on port {port}"
        assert all(a.is_loopback for a in addresses), f"listening on {addresses}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_readme_keeps_two_setup_commands_and_explains_serving_a_class():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^```bash$", setup, re.MULTILINE)) == 2
    serving = readme.split("## Serving a class", 1)[1].split("\n## ", 1)[0]
    assert "--server.address" in serving
    for exposed in ("reset", "export", "no password"):
        assert exposed in serving.lower(), exposed
