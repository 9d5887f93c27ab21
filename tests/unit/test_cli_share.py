"""``shoal share ID KEY`` takes every client key, including the one in 64 that begins with "-"."""

from __future__ import annotations

import base64
import subprocess
import sys


def test_a_key_that_begins_with_a_dash_is_a_key_not_an_option() -> None:
    key = base64.urlsafe_b64encode(bytes([0xF8]) + bytes(range(31))).decode()
    assert key.startswith("-")
    out = subprocess.run([sys.executable, "-m", "cli.main", "--api", "http://127.0.0.1:9", "share",
                          "j-" + "0" * 32, key], capture_output=True, text=True, timeout=60)
    assert "No such option" not in out.stderr
    assert out.stderr.startswith("Error: cannot reach Shoal API"), out.stderr  # parsed, then sent
