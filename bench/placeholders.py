"""Benchmark (4) subscriber-list sync: its feature lives on another branch.

The harness slot exists so it plugs in like the others: write `bench_subscribers(stack, api, n)`
in `bench/__main__.py` returning the same row shape, with the raw baseline named in
docs/performance.md. Until then it reports as not measured. (5) reports: bench/report_bench.py.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDERS: list[dict[str, Any]] = [
    {"name": "subscribers_sync", "unit": "rows/s", "rejoin": None, "baseline": None, "ratio": None, "target": 0.5,
     "baseline_desc": "not measured: needs the audience/S3 feature (issue 4); baseline COPY + index + swap"},
]
