"""Proof-of-work nonce search: find a 32-bit nonce such that SHA-256(SHA-256(BLOCK || nonce)) starts with
DIFFICULTY zero bits. Index SHOAL_INDEX of a SHOAL_COUNT-index sweep scans its contiguous share of the
nonce space and stops at the first hit, which it writes to /outputs/nonce.txt; a share without a hit
exits 0 and writes nothing, so `--success any --success-output nonce` counts only real finds.

Environment (all optional):
    BLOCK        the block: hex (``0x...``, or an even number of hex digits) or else UTF-8 text
    DIFFICULTY   leading zero bits wanted (default 21)
    SHOAL_INDEX  this index (default 0), set by Shoal in a sweep
    SHOAL_COUNT  number of indexes (default 1), set by Shoal in a sweep
    OUTPUT_DIR   where nonce.txt goes (default /outputs, the declared output); for local runs

The nonce is appended as 4 bytes big-endian; the hash is shown as the digest's bytes in order
(not reversed as Bitcoin displays it). Locally: ``SHOAL_INDEX=0 SHOAL_COUNT=32 DIFFICULTY=16
OUTPUT_DIR=out python main.py``.
"""

import hashlib
import os
import sys

DEFAULT_BLOCK = "shoal nonce-search example block"
DEFAULT_DIFFICULTY = 21
NONCE_SPACE = 1 << 32
PROGRESS_EVERY = 1 << 24  # nonces between progress lines: about half a minute on one core
_BYTES = [bytes([i]) for i in range(256)]  # the nonce's last byte, prebuilt


def parse_block(text: str) -> bytes:
    """``0x...`` or an even number of hex digits is hex; anything else is UTF-8 text."""
    digits = text[2:] if text[:2].lower() == "0x" else text
    if digits and len(digits) % 2 == 0:
        try:
            return bytes.fromhex(digits)
        except ValueError:
            pass
    if text[:2].lower() == "0x":
        raise ValueError(f"BLOCK {text!r} starts with 0x but is not hex")
    return text.encode()


def share(index: int, count: int) -> tuple[int, int]:
    """The half-open nonce range of index ``index`` of ``count``: contiguous, together exactly 0-2^32."""
    return NONCE_SPACE * index // count, NONCE_SPACE * (index + 1) // count


def search(block: bytes, difficulty: int, start: int, end: int) -> tuple[int, bytes] | None:
    """The first nonce in [start, end) whose double SHA-256 has ``difficulty`` leading zero bits."""
    target = (1 << (256 - difficulty)).to_bytes(32, "big") if difficulty else b"\xff" * 33  # 0: any digest
    sha = hashlib.sha256
    base = sha(block)  # the block's state, hashed once; every nonce continues from a copy of it
    next_progress = start + PROGRESS_EVERY
    for high in range(start >> 8, (end + 255) >> 8):  # the nonce's first three bytes
        first = high << 8
        prefix = base.copy()
        prefix.update(first.to_bytes(4, "big")[:3])
        copy = prefix.copy
        lows = _BYTES if start <= first and first + 256 <= end else _BYTES[max(start - first, 0):end - first]
        for low in lows:
            h = copy()
            h.update(low)
            digest = sha(h.digest()).digest()
            if digest < target:
                return first | low[0], digest
        if first >= next_progress:
            next_progress += PROGRESS_EVERY
            print(f"  {first - start + 256} nonces scanned, none yet", flush=True)
    return None


def leading_zero_bits(digest: bytes) -> int:
    return len(digest) * 8 - int.from_bytes(digest, "big").bit_length()


def main() -> int:
    env = os.environ
    try:
        block = parse_block(env.get("BLOCK", DEFAULT_BLOCK))
        difficulty = int(env.get("DIFFICULTY", DEFAULT_DIFFICULTY))
        index, count = int(env.get("SHOAL_INDEX", "0")), int(env.get("SHOAL_COUNT", "1"))
    except ValueError as e:
        print(f"nonce-search: {e}", file=sys.stderr)
        return 2
    if not 0 <= difficulty <= 256 or not 0 <= index < count <= NONCE_SPACE:
        print(f"nonce-search: need 0 <= DIFFICULTY <= 256 and 0 <= SHOAL_INDEX < SHOAL_COUNT <= 2^32 "
              f"(got {difficulty}, {index}, {count})", file=sys.stderr)
        return 2
    start, end = share(index, count)
    print(f"index {index}/{count}: nonces {start}-{end - 1}, difficulty {difficulty}", flush=True)
    found = search(block, difficulty, start, end)
    if found is None:
        print(f"index {index}/{count}: no nonce with {difficulty} leading zero bits in {start}-{end - 1}")
        return 0
    nonce, digest = found
    out = env.get("OUTPUT_DIR", "/outputs")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "nonce.txt"), "w") as f:
        f.write(f"{nonce} {digest.hex()}\n")
    print(f"index {index}/{count}: FOUND nonce {nonce} (0x{nonce:08x}) after {nonce - start + 1} tries: "
          f"sha256d {digest.hex()} ({leading_zero_bits(digest)} leading zero bits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
