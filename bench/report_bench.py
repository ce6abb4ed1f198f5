"""Report query timing on synthetic data: `python bench/report_bench.py USERS [DB_URL]`.

Seeds one campaign with USERS allocated users (2 variations + holdout), ~2 sends, ~1.5 hits and
~0.3 purchases per user, plus unrelated events, then times build_report. Not a test.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from api.routes.reports import build_report
from store.campaigns import load_spec
from store.engine import Store
from store.tables import Campaign, CampaignVersion, Event, Journey, Section, Send, User
from store.tracking_tables import TrackingHit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = {"name": "Bench", "type": "cart_abandonment", "channel_priority": ["email", "sms"],
        "variations": [{"id": "a", "name": "A", "share": 45, "steps": [{"name": "S1", "messages": {"email": {}}},
                                                                        {"name": "S2", "wait": "P1D", "messages": {"sms": {}}}]},
                       {"id": "b", "name": "B", "share": 45, "steps": [{"name": "S1", "messages": {"email": {}}}]},
                       {"id": "h", "name": "Holdout", "share": 10, "control": True}]}  # fmt: skip


def seed(store: Store, users: int) -> None:
    rng = random.Random(1)
    with store.session() as s:
        s.add(Section(id="sec", name="b", created_at=T0))
        s.flush()
        s.add(Campaign(id="cmp", section_id="sec", name="Bench", type="cart_abandonment", created_at=T0, updated_at=T0))
        s.flush()
        s.add(CampaignVersion(campaign_id="cmp", version=1, spec=SPEC, created_at=T0))
    batch = 20_000
    for start in range(0, users, batch):
        us, js, ss, hs, es = [], [], [], [], []
        for n in range(start, min(start + batch, users)):
            uid = f"u{n}"
            at = T0 + timedelta(minutes=rng.randrange(60 * 24 * 30))
            var = "h" if n % 10 == 0 else ("a" if n % 2 else "b")
            us.append({"id": uid, "section_id": "sec", "cuid": uid, "attributes": {}, "cart": [], "is_test": False,
                       "created_at": at, "updated_at": at})  # fmt: skip
            js.append({"id": f"j{n}", "workflow_id": "w", "section_id": "sec", "campaign_id": "cmp", "campaign_version": 1,
                       "priority": 50, "user_id": uid, "variation_id": var, "is_control": var == "h", "is_test": False,
                       "status": "completed", "triggered_at": at})  # fmt: skip
            if var == "h":
                continue
            for step, ch in ((0, "email"), (1, "sms")):
                sent = at + timedelta(hours=1 + 24 * step)
                ss.append({"key": f"j{n}:{step}:{ch}", "journey_id": f"j{n}", "section_id": "sec", "campaign_id": "cmp",
                           "variation_id": var, "step_index": step, "channel": ch, "integration_id": "i", "user_id": uid,
                           "status": "accepted", "attempts": 1, "possible_duplicate": False, "created_at": sent, "updated_at": sent})  # fmt: skip
                if rng.random() < 0.5:
                    hs.append({"section_id": "sec", "campaign_id": "cmp", "variation_id": var, "step_index": step, "channel": ch,
                               "send_key": "k", "user_id": uid, "kind": "impression", "source": "pixel", "bot": False, "at": sent + timedelta(minutes=5)})  # fmt: skip
                if rng.random() < 0.25:
                    hs.append({"section_id": "sec", "campaign_id": "cmp", "variation_id": var, "step_index": step, "channel": ch,
                               "send_key": "k", "user_id": uid, "kind": "click", "source": "link", "bot": False, "at": sent + timedelta(minutes=6)})  # fmt: skip
            for k in range(3):
                kind = "purchase" if k == 0 and rng.random() < 0.3 else "product_view"
                es.append({"id": f"e{n}_{k}", "section_id": "sec", "user_id": uid, "kind": kind, "name": kind, "data": {},
                           "consented": True, "received_at": at + timedelta(hours=2 + k), "dispatched": True,
                           "value": 50.0 if kind == "purchase" else None, "commands": []})  # fmt: skip
        with store.engine.begin() as conn:
            for table, rows in ((User, us), (Journey, js), (Send, ss), (TrackingHit, hs), (Event, es)):
                if rows:
                    conn.execute(insert(table), rows)  # type: ignore[arg-type]


def main() -> None:
    users = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    url = sys.argv[2] if len(sys.argv) > 2 else f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    store = Store(url)
    t = time.perf_counter()
    seed(store, users)
    print(f"seeded {users} users in {time.perf_counter() - t:.1f}s")
    with store.session() as s:
        c = s.get(Campaign, "cmp")
        assert c is not None
        spec = load_spec(s, "cmp", 1)
        for label, (a, b) in {"30 days": (T0, T0 + timedelta(days=40)), "1 day": (T0, T0 + timedelta(days=1))}.items():
            t = time.perf_counter()
            body = build_report(s, c, spec, a, b)
            print(f"report over {label}: {time.perf_counter() - t:.2f}s, users {body['totals']['users_triggered']}, "
                  f"sends {body['totals']['send_requests']}, purchases {body['totals']['purchases']}")  # fmt: skip
    store.dispose()


if __name__ == "__main__":
    main()
