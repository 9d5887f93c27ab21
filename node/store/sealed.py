"""Job secrets at rest: sealed (AES-GCM) with a key of this node's, in a file beside the store.

The store file then never holds a secret in clear, in its pages, its free pages or its WAL: a
copy of it (a backup, a bug report) gives nothing without the key file. Each sealed value is
bound to its job id, so it cannot be moved to another job's row.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jobs import ShoalError
from node.store.writer import StoreUnavailable
from shoal._auth import create_key_file

_NONCE = 12


class SealError(ShoalError):
    """A sealed value that cannot be opened (another key, or damaged); trying again will not help."""


class Sealer:
    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._aead: AESGCM | None = None

    def _key(self, create: bool) -> AESGCM | None:
        if self._aead is None:
            try:
                key = self.key_path.read_bytes()
            except FileNotFoundError:
                if not create:
                    return None
                key = AESGCM.generate_key(bit_length=256)
                try:  # whole or not at all: an empty key would refuse every secret from then on
                    create_key_file(self.key_path, key)
                except OSError as e:  # a full disk: nothing was written, try again later
                    raise StoreUnavailable(f"cannot create the secrets key {self.key_path}: {e.strerror or e}") from e
            if len(key) != 32:
                raise SealError(f"{self.key_path} is not a 32-byte key")
            self._aead = AESGCM(key)
        return self._aead

    def seal(self, job_id: str, env: dict[str, str]) -> str:
        aead = self._key(create=True)
        assert aead is not None
        nonce = os.urandom(_NONCE)
        sealed = aead.encrypt(nonce, json.dumps(env).encode(), job_id.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, job_id: str, blob: str) -> dict[str, str]:
        aead = self._key(create=False)
        if aead is None:
            raise SealError(f"no key at {self.key_path}")
        try:
            raw = base64.b64decode(blob)
            env = json.loads(aead.decrypt(raw[:_NONCE], raw[_NONCE:], job_id.encode()))
        except (InvalidTag, ValueError) as e:
            raise SealError(f"cannot open the secrets of job {job_id}") from e
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise SealError(f"cannot open the secrets of job {job_id}")
        return env
