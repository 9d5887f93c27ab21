"""The runner's "ready" message says whether its interpreter is the previous job's, reset in place
(runner.mjs); the engine counts those runs. Only a literal true counts: anything else is a fresh load."""

from __future__ import annotations

import pytest

from executors.pyodide import _Runner


class Control:
    """Stands for the runner's control channel: hands out the given bytes, then end of file."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def receive_some(self, max_bytes: int) -> bytes:
        chunk, self.data = self.data[:max_bytes], self.data[max_bytes:]
        return chunk


@pytest.mark.parametrize(("line", "reset"), [
    (b'{"event": "ready", "reset": true}\n', True),
    (b'{"event": "ready", "reset": false}\n', False),
    (b'{"event": "ready"}\n', False),
    (b'{"event": "ready", "reset": "yes"}\n', False),
])
async def test_ready_tells_a_reset_interpreter_from_a_fresh_one(line: bytes, reset: bool) -> None:
    runner = _Runner(process=None, control=Control(line))  # type: ignore[arg-type]
    await runner.wait_ready()
    assert runner.ready and runner.reset is reset
