"""Benchmarks (4) subscriber-list sync and (5) reports: their features live on other branches.

The harness slot exists so they plug in like the others: write `bench_subscribers(stack, api, n)`
and `bench_reports(stack, api, n)` in `bench/__main__.py` returning the same row shape, with the
raw baselines named in docs/performance.md. Until then they report as not measured.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDERS: list[dict[str, Any]] = [
    {"name": "subscribers_sync", "unit": "rows/s", "rejoin": None, "baseline": None, "ratio": None, "target": 0.5,
     "baseline_desc": "not measured: needs the audience/S3 feature (issue 4); baseline COPY + index + swap"},
    {"name": "reports", "unit": "s/report", "rejoin": None, "baseline": None, "ratio": None, "target": 1.0,
     "baseline_desc": "not measured: needs reports (issue 5); target < 1 s over 10M rows on PostgreSQL"},
]
