"""Benchmark (5) reports: its feature lives on another branch.

The harness slot exists so it plugs in like the others: write `bench_reports(stack, api, n)` in
`bench/__main__.py` returning the same row shape, with the raw baseline named in
docs/performance.md. Until then it reports as not measured. (4) is `bench/subscribers.py`.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDERS: list[dict[str, Any]] = [
    {"name": "reports", "unit": "s/report", "rejoin": None, "baseline": None, "ratio": None, "target": 1.0,
     "baseline_desc": "not measured: needs reports (issue 5); target < 1 s over 10M rows on PostgreSQL"},
]
