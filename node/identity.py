"""The node's Ed25519 identity: a 32-byte seed in the data dir, so the peer id survives restarts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_FILE = "node.key"


def load_or_create_seed(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(f"{path} is not a 32-byte Ed25519 seed; move it away to create a new identity")
        return seed
    data_dir.mkdir(parents=True, exist_ok=True)
    seed = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    return seed
