"""Record the replay suite's journey histories into tests/histories/ (commit the result).

    python -m tests.record_histories

Runs `tests/reliability/test_replay.py::test_record_histories` against a fresh Temporal dev
server and database (the normal test fixtures). Re-record only when a workflow change is
*meant* to be incompatible (then version it with `workflow.patched` first).
"""

from __future__ import annotations

import os
import sys

import pytest


def main() -> int:
    os.environ["REJOIN_RECORD_HISTORIES"] = "1"
    return pytest.main(["-q", "-p", "no:logging", "tests/reliability/test_replay.py::test_record_histories"])


if __name__ == "__main__":
    sys.exit(main())
