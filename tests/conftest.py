"""Settings every test process shares."""

import os

# pytest-xdist's workers start with COLUMNS=80 and LINES=24. The CLI sizes its tables to COLUMNS when
# set (into a pipe it is otherwise wide), so the tables the tests read would wrap under `pytest -n` alone.
for name in ("COLUMNS", "LINES"):
    os.environ.pop(name, None)
