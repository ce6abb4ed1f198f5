"""Benchmark (5): a campaign report over millions of sends, hits and events, on PostgreSQL.

    python -m bench --only reports --database-url postgresql://postgres@127.0.0.1:5432/postgres --scale 10
    python bench/report_bench.py FACTS [POSTGRES_URL]

Seeds ONE campaign in a database of its own (`rejoin_bench_reports` on the given server,
dropped afterwards) with INSERT ... SELECT generate_series (no row-by-row inserts): FACTS sends +
tracking hits + site events (1M per --scale unit; 10M at --scale 10), then builds the report
pre-aggregation with `store.report_rollup.rebuild` and times the report (median of 3) over the
full range and over one week with edges inside an hour, beside the baseline: the same report
computed from the raw tables (`load_raw`, timed once). Also checks both give the same report.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlmodel import SQLModel

from api.routes.reports import build_report
from bench import scratch_db
from store import reports as q
from store.campaigns import load_spec
from store.engine import Store
from store.report_rollup import rebuild
from store.tables import Campaign, CampaignVersion, Section

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
FACTS_PER_USER = 0.9 * 2 + (0.9 * 2 * 0.5 + 0.9 * 2 * 0.25) + 3  # sends + hits (impressions, clicks) + events
SPEC = {"name": "Bench", "type": "cart_abandonment", "channel_priority": ["email", "sms"],
        "settings": {"primary_metric": "purchases"},
        "variations": [{"id": "a", "name": "A", "share": 45, "steps": [{"name": "S1", "messages": {"email": {}}},
                                                                        {"name": "S2", "wait": "P1D", "messages": {"sms": {}}}]},
                       {"id": "b", "name": "B", "share": 45, "steps": [{"name": "S1", "messages": {"email": {}}},
                                                                        {"name": "S2", "wait": "P1D", "messages": {"sms": {}}}]},
                       {"id": "h", "name": "Holdout", "share": 10, "control": True}]}  # fmt: skip

# Deterministic spread: user g first triggers at a pseudo-random minute of the 30 days.
TRIGGER = f"(timestamptz '{T0.isoformat()}' + ((g * 7919) % {DAYS * 1440}) * interval '1 minute' + (g % 60) * interval '1 second')"
SENT_AT = f"({TRIGGER} + interval '1 hour' + st.step * interval '1 day')"
STEPS = "(VALUES (0, 'email'), (1, 'sms')) AS st(step, ch)"
VARIATION = "CASE WHEN g % 10 = 0 THEN 'h' WHEN g % 2 = 1 THEN 'a' ELSE 'b' END"


def pct(salt: str) -> str:
    """A deterministic, well-mixed pseudo-random 0..999 per user and salt (PostgreSQL's int8 hash)."""
    return f"(abs(hashint8(g * 16 + {salt})) % 1000)"


SEED_SQL = [
    f"""INSERT INTO "user" (id, section_id, cuid, attributes, cart, is_test, created_at, updated_at)
        SELECT 'u' || g, 'sec', 'u' || g, '{{}}', '[]', false, {TRIGGER}, {TRIGGER} FROM generate_series(0::bigint, %(n)s - 1) g""",
    f"""INSERT INTO journey (id, workflow_id, section_id, campaign_id, campaign_version, priority, user_id, variation_id,
                             is_control, is_test, status, triggered_at)
        SELECT 'j' || g, 'w', 'sec', 'cmp', 1, 50, 'u' || g, {VARIATION}, g % 10 = 0, false, 'completed', {TRIGGER}
        FROM generate_series(0::bigint, %(n)s - 1) g""",
    f"""INSERT INTO send (key, journey_id, section_id, campaign_id, variation_id, step_index, channel, integration_id,
                          user_id, status, attempts, possible_duplicate, created_at, updated_at)
        SELECT 'j' || g || ':' || st.step, 'j' || g, 'sec', 'cmp', {VARIATION}, st.step, st.ch, 'i', 'u' || g,
               'accepted', 1, false, {SENT_AT}, {SENT_AT}
        FROM generate_series(0::bigint, %(n)s - 1) g CROSS JOIN {STEPS} WHERE g % 10 <> 0""",
    f"""INSERT INTO trackinghit (section_id, campaign_id, variation_id, step_index, channel, send_key, user_id, kind,
                                 source, bot, first_of_send, at)
        SELECT 'sec', 'cmp', {VARIATION}, st.step, st.ch, 'j' || g || ':' || st.step, 'u' || g, 'impression', 'pixel',
               false, true, {SENT_AT} + interval '5 minutes'
        FROM generate_series(0::bigint, %(n)s - 1) g CROSS JOIN {STEPS} WHERE g % 10 <> 0 AND {pct("st.step")} < 500""",
    f"""INSERT INTO trackinghit (section_id, campaign_id, variation_id, step_index, channel, send_key, user_id, kind,
                                 source, bot, first_of_send, at)
        SELECT 'sec', 'cmp', {VARIATION}, st.step, st.ch, 'j' || g || ':' || st.step, 'u' || g, 'click', 'link',
               {pct("5")} < 20, {pct("5")} >= 20, {SENT_AT} + interval '6 minutes'
        FROM generate_series(0::bigint, %(n)s - 1) g CROSS JOIN {STEPS} WHERE g % 10 <> 0 AND {pct("2 + st.step")} < 250""",
    # 3 events per user: ~5% buy (2 h after the trigger, after the first click), ~5% add to cart, the rest views.
    f"""INSERT INTO event (id, section_id, user_id, kind, name, data, consented, received_at, dispatched, deferred,
                           transaction_id, value, commands)
        SELECT 'e' || g || '_' || k, 'sec', 'u' || g, kinds.kind, kinds.kind, '{{}}', true,
               {TRIGGER} + (2 + k) * interval '1 hour', true, false,
               CASE WHEN kinds.kind = 'purchase' THEN 'tx' || g END, CASE WHEN kinds.kind = 'purchase' THEN 20 + g % 80 END, '[]'
        FROM generate_series(0::bigint, %(n)s - 1) g CROSS JOIN generate_series(0, 2) k
        CROSS JOIN LATERAL (SELECT CASE WHEN k = 0 AND {pct("6")} < 50 THEN 'purchase'
                                        WHEN k = 1 AND {pct("7")} < 50 THEN 'add_to_cart'
                                        ELSE 'product_view' END AS kind) kinds""",
]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def seed(store: Store, users: int) -> dict[str, int]:
    with store.session() as s:
        s.add(Section(id="sec", name="bench", created_at=T0))
        s.flush()
        s.add(Campaign(id="cmp", section_id="sec", name="Bench", type="cart_abandonment", created_at=T0, updated_at=T0))
        s.flush()
        s.add(CampaignVersion(campaign_id="cmp", version=1, spec=SPEC, created_at=T0))
    # Secondary indexes are dropped while seeding and built after: much faster than maintaining them.
    indexes = [
        i for t in ("user", "journey", "send", "trackinghit", "event") for i in SQLModel.metadata.tables[t].indexes
    ]
    with store.engine.begin() as conn:
        for index in indexes:
            index.drop(conn)
        for sql in SEED_SQL:
            conn.exec_driver_sql(sql.replace("%", "%%").replace("%%(n)s", "%(n)s"), {"n": users})
        for index in indexes:
            index.create(conn)
    counts = {}
    with store.engine.connect() as conn:
        for table in ("send", "trackinghit", "event", "journey"):
            counts[table] = int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    return counts


def _vacuum(url: str) -> None:
    with psycopg.connect(scratch_db.libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def run(url: str, facts: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seed FACTS facts in a database of our own on `url`'s server, time the reports, drop it."""
    if not scratch_db.is_postgres(url):
        return {"name": "reports", "unit": "s/report", "rejoin": None, "baseline": None, "ratio": None, "target": 1.0,
                "baseline_desc": "not measured: needs --database-url postgresql://..."}  # fmt: skip
    with scratch_db.scratch_database(url, "rejoin_bench_reports") as own:
        store = Store(own)
        try:
            users = int(facts / FACTS_PER_USER)
            seed_s, counts = _timed(lambda: seed(store, users))
            n_facts = counts["send"] + counts["trackinghit"] + counts["event"]
            log(f"seeded {users} users, {n_facts} facts {counts} in {seed_s:.0f} s")
            _vacuum(own)

            def build() -> int:
                with store.session() as s:
                    return rebuild(s, ["cmp"])

            rollup_s, _ = _timed(build)
            _vacuum(own)
            log(f"report pre-aggregation rebuilt in {rollup_s:.1f} s")
            week = (T0 + timedelta(days=10, minutes=17, seconds=30), T0 + timedelta(days=17, minutes=42, seconds=15))
            ranges = {"full": (T0, T0 + timedelta(days=DAYS + 10)), "week": week}
            out: dict[str, Any] = {}
            with store.session() as s:
                c = s.get(Campaign, "cmp")
                assert c is not None
                spec = load_spec(s, "cmp", 1)
                for label, (a, b) in ranges.items():
                    times = []
                    for _ in range(3):
                        t, fast = _timed(partial(build_report, s, c, spec, a, b))
                        times.append(t)
                    # The database part alone (the rest: aggregation and the winner's numpy draws, a few ms).
                    loads = [
                        _timed(partial(q.load, s, "sec", "cmp", a, b, spec.settings.attribution_window))[0]
                        for _ in range(3)
                    ]
                    raw_s, ref = _timed(partial(build_report, s, c, spec, a, b, raw=True))
                    same = fast == ref
                    out[label] = {"median_s": statistics.median(times), "runs_s": times, "raw_s": raw_s, "same_report": same,
                                  "load_median_s": statistics.median(loads),
                                  "users": fast["totals"]["users_triggered"], "sends": fast["totals"]["send_requests"],
                                  "purchases": fast["totals"]["purchases"]}  # fmt: skip
                    log(f"report {label}: {statistics.median(times):.3f} s (runs {', '.join(f'{x:.3f}' for x in times)}); "
                        f"raw {raw_s:.1f} s; same report: {same}; users {out[label]['users']}, sends {out[label]['sends']}, "
                        f"purchases {out[label]['purchases']}; database part {statistics.median(loads):.3f} s")  # fmt: skip
                list_s, _ = _timed(lambda: q.sends_since(s, ["cmp"], T0 + timedelta(days=DAYS - 7)))
            full = out["full"]
            return {"name": "reports", "unit": "s/report", "rejoin": full["median_s"], "baseline": full["raw_s"],
                    "ratio": full["raw_s"] / full["median_s"], "target": 1.0, "facts": n_facts, "rows": counts,
                    "seed_s": seed_s, "rollup_rebuild_s": rollup_s, "week_median_s": out["week"]["median_s"],
                    "week_raw_s": out["week"]["raw_s"],
                    "load_median_s": full["load_median_s"],
                    "week_load_median_s": out["week"]["load_median_s"], "same_report": all(o["same_report"] for o in out.values()),
                    "campaign_list_7_days_s": list_s,
                    "baseline_desc": "same report from the raw tables (load_raw); ratio = speed-up; target: < 1 s"}  # fmt: skip
        finally:
            store.dispose()


def main() -> None:
    facts = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    url = sys.argv[2] if len(sys.argv) > 2 else "postgresql://postgres@127.0.0.1:5432/postgres"
    print(run(url, facts))


if __name__ == "__main__":
    main()
