"""Soak: the real stack under random shopper traffic, against a provider that fails at random,
then the promises a journey engine makes, checked in the store, at the provider and in the logs.

    python -m bench.soak                                  # SQLite, 100 test users, 60 s of traffic
    python -m bench.soak --database-url postgresql://postgres@127.0.0.1:5432/postgres --real-share 0.2
    python -m bench.soak --kill-worker-every 20 --kill-api-every 13 --kill-server-every 25   # crashes

Not a benchmark and not in the suite: a run no test scripted (docs/reliability.md). The dev
server, a worker and the API run as processes (`bench/harness.py`); the provider is the suite's
scriptable server (`tests/provider_server.py`), answering each call with a fault drawn at random:
5xx, 429 with Retry-After in seconds or as an HTTP date, a dropped connection, a truncated body,
an answer slower than the delivery timeout, permanent 4xx, a redirect to a metadata address, a
non-JSON 200, an empty 202. Two campaigns compete for the shoppers (cart, browse), e-mail first
and SMS as the fallback. Shoppers add to cart (re-triggering their journey), view, buy (the cart
campaign's exit), and send malformed requests. Test users skip their waits; "real" users
(`--real-share`) wait the campaign's minimum of 5 minutes per step, so such a run lasts ~20 min.

When every journey has ended it checks, and exits 1 if any fails:
- the API answered no 5xx, and stored and dispatched every event it answered 202 (and any the
  killed API stored without answering);
- no journey is left active and no send in flight or retrying;
- a message the provider received more than once is flagged `possible_duplicate`, never silent;
- every send recorded accepted reached the provider with a complete 2xx; none is unknown to us;
- no journey sent a step twice, no person got more than the global cap (5 per channel in any
  24 h of their journeys' clocks), no holdout got a message, no send began after its journey
  exited;
- each campaign's report from the pre-aggregated counters equals the one computed from raw rows;
- the cart index holds exactly every person's cart;
- the worker and API logged no traceback (expected provider faults are one INFO line each).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import func
from sqlmodel import Session, col, select

from bench.harness import ADMIN_KEY, Stack
from store.engine import make_engine
from store import cart_index
from store.cart_tables import CartEntry
from store.identity_tables import UserAlias
from store.tables import CapReservation, Event, Journey, Send, User
from tests.provider_server import ProviderServer, Received, Reply

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
DELIVERY_TIMEOUT_S = 5  # an attempt's budget: the provider's slowest answer outlasts it
CAP = 5  # the global frequency cap, per person and channel per 24 h (the product's default)


# ------------------------------------------------------------------ the provider's faults

# (weight, name, reply); weights sum to 100. About half the calls fail at first.
Fault = tuple[int, str, Callable[[random.Random], Reply]]
FAULTS: list[Fault] = [
    (52, "200", lambda r: Reply(200, {"id": f"m{r.randrange(10**9)}"})),
    (5, "202 empty", lambda r: Reply(202, "")),
    (10, "500", lambda r: Reply(500, {"error": "boom"})),
    (5, "503", lambda r: Reply(503, "unavailable")),
    (5, "429 seconds", lambda r: Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"})),
    (
        3,
        "429 http-date",
        lambda r: Reply(429, headers={"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}),
    ),
    (4, "dropped", lambda r: Reply(200, drop=True)),
    (3, "truncated", lambda r: Reply(200, {"id": "a-long-enough-body"}, truncate=True)),
    (3, "slow", lambda r: Reply(200, {"id": "slow"}, delay=r.choice([0.5, 2.0, DELIVERY_TIMEOUT_S + 30.0]))),
    (2, "400", lambda r: Reply(400, {"error": "bad recipient"})),
    (1, "401", lambda r: Reply(401, {"error": "bad key"})),
    (2, "302 to metadata", lambda r: Reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})),
    (5, "200 html", lambda r: Reply(200, "<html>ok</html>", headers={"content-type": "text/html"})),
]


class FaultyProvider:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.answered: Counter[str] = Counter()
        self.server = ProviderServer().start()
        for channel in ("email", "sms"):
            self.server.handler(f"/{channel}", self._answer)

    def _answer(self, request: Received) -> Reply:  # noqa: ARG002 (any request: the fault is random)
        weights = [w for w, _, _ in FAULTS]
        _, name, reply = self.rng.choices(FAULTS, weights)[0]
        self.answered[name] += 1
        return reply(self.rng)

    def delivered(self) -> Counter[str]:
        """Complete 2xx answers per idempotency key: what a recipient would have received."""
        return Counter(r.headers.get("idempotency-key", "") for r in self.server.deliveries)


# ------------------------------------------------------------------ traffic


class Api:
    def __init__(self, url: str) -> None:
        self.http = aiohttp.ClientSession(url)
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []

    async def call(self, method: str, path: str, headers: dict[str, str], body: Any = None,
                   raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
        kw: dict[str, Any] = {"json": body, "headers": headers}
        if raw is not None:
            kw = {"data": raw, "headers": {**headers, "content-type": "application/json"}}
        try:
            async with self.http.request(method, path, **kw) as r:
                body_text = await r.text()
                status = r.status
        except aiohttp.ClientConnectionError:  # the API is down (killed): no answer, status 0
            self.statuses[0] += 1
            return 0, None
        self.statuses[status] += 1
        if status >= 500:
            self.server_errors.append(f"{method} {path}: {status} {body_text[:300]}")
        try:
            return status, json.loads(body_text) if body_text else None
        except ValueError:
            return status, body_text

    async def must(self, want: int, method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
        status, out = await self.call(method, path, headers, body)
        if status != want:
            raise RuntimeError(f"{method} {path}: {status} {out}")
        return out


def _items(skus: list[str]) -> list[dict[str, Any]]:
    return [{"productId": s, "quantity": 1, "itemPrice": 10.0} for s in skus]


def add_to_cart(skus: list[str]) -> dict[str, Any]:
    return {"name": "Add to Cart", "properties": {"dyType": "add-to-cart-v1", "value": 10.0, "productId": skus[-1],
            "quantity": 1, "cart": _items(skus)}}  # fmt: skip


def purchase(skus: list[str], tx: str) -> dict[str, Any]:
    return {"name": "Purchase", "properties": {"dyType": "purchase-v1", "value": 10.0 * len(skus),
            "uniqueTransactionId": tx, "cart": _items(skus)}}  # fmt: skip


MALFORMED = [b"{", b"[]", b'{"user": {}, "events": [{}]}',
             b'{"user": {"dyid": "1"}, "events": [{"name": "' + b"x" * 5000 + b'"}]}']  # fmt: skip


class Shop:
    """One section with flaky e-mail and SMS integrations and a three-step cart campaign (exit: purchase)."""

    def __init__(self, api: Api, rng: random.Random) -> None:
        self.api, self.rng = api, rng
        self.mgmt: dict[str, str] = {}
        self.ing: dict[str, str] = {}
        self.campaign_ids: list[str] = []
        self.purchases = 0
        self.accepted_ids: set[str] = set()  # events answered 202: each must be stored and dispatched

    async def open(self, provider: ProviderServer) -> None:
        """E-mail first, SMS the fallback (a permanent e-mail failure moves the step to SMS)."""
        sec = await self.api.must(201, "POST", "/api/v1/sections", ADMIN, {"name": "soak"})
        self.mgmt = {"Authorization": f"Bearer {sec['management_key']['key']}"}
        self.ing = {"dy-api-key": sec["ingestion_key"]["key"]}
        for channel, id_type in (("email", "email"), ("sms", "phone")):
            integration = {"channel": channel, "name": f"flaky {channel}", "kind": "custom_http",
                           "identifier_type": id_type, "config": {"url": provider.url(f"/{channel}")}}  # fmt: skip
            await self.api.must(201, "POST", "/api/v1/integrations", self.mgmt, integration)
        messages = {"email": {"payload": {"subject": "Your cart"}}, "sms": {"payload": {"body": "Your cart"}}}
        steps = [{"name": f"S{i}", "messages": messages, **({"wait": "PT5M"} if i else {})} for i in range(3)]
        spec = {"name": "soak cart", "type": "cart_abandonment", "trigger": {"wait": "PT5M"},
                "channel_priority": ["email", "sms"], "exits": [{"event": "purchase"}],
                "variations": [{"id": "a", "name": "Three steps", "share": 50, "steps": steps},
                               {"id": "b", "name": "Two steps", "share": 40, "steps": steps[:2]},
                               {"id": "c", "name": "Holdout", "share": 10, "control": True}]}  # fmt: skip
        # A browse campaign competing for the same people: lower priority, one step, no exit.
        browse = {"name": "soak browse", "type": "product_view", "priority": 10, "trigger": {"wait": "PT5M"},
                  "channel_priority": ["email", "sms"],
                  "variations": [{"id": "a", "name": "One step", "share": 100, "steps": steps[:1]}]}  # fmt: skip
        for campaign in (spec, browse):
            camp = await self.api.must(201, "POST", "/api/v1/campaigns", self.mgmt, campaign)
            await self.api.must(200, "POST", f"/api/v1/campaigns/{camp['id']}/activate", self.mgmt)
            self.campaign_ids.append(camp["id"])

    async def shopper(self, i: int, is_test: bool) -> tuple[str, list[str]]:
        """An identified user opted in to e-mail, every other one to SMS too; test users' journeys
        skip their waits. Every third one carts an item in the body that logs them in (no consent
        yet, so no journey starts before the test flag): (dyid, the cart it starts with)."""
        dyid, mail, phone = f"{5 * 10**12 + i}", f"soak{i}@example.com", f"+1555{i:07d}"
        await self.api.must(200, "POST", "/v2/userdata/channels/email/opt-in", self.ing,
                            {"identifier": {"type": "email", "value": mail}})  # fmt: skip
        properties: dict[str, Any] = {"dyType": "login-v1", "hashedEmail": hashlib.sha256(mail.encode()).hexdigest()}
        if i % 2:
            await self.api.must(200, "POST", "/v2/userdata/channels/sms/opt-in", self.ing,
                                {"identifier": {"type": "phoneNumber", "value": phone}})  # fmt: skip
            properties["secondaryIdentifiers"] = [{"type": "phoneNumber", "value": phone}]
        login = {"name": "Login", "properties": properties}
        cart = ["sku-0"] if i % 3 == 0 else []
        events = ([add_to_cart(cart)] if cart else []) + [login]
        await self.api.must(202, "POST", "/v2/collect/user/event", self.ing, self._body(dyid, events, consent=not cart))
        if is_test:
            await self.api.must(200, "PUT", f"/api/v1/users/{dyid}/test", self.mgmt, {"is_test": True})
        return dyid, cart

    def _body(self, dyid: str, events: list[dict[str, Any]], consent: bool = True) -> dict[str, Any]:
        return {"user": {"dyid": dyid, "active_consent_accepted": consent}, "events": events}

    async def browse(self, dyid: str, cart: list[str], until: float, mean_gap: float) -> None:
        """Random visits until `until`: mostly cart changes (re-triggers), some views, buys, junk."""
        cart = list(cart)
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.expovariate(1 / mean_gap))
            roll = self.rng.random()
            if roll < 0.55:
                cart.append(f"sku-{self.rng.randrange(30)}")
                events = [add_to_cart(cart)]
            elif roll < 0.70:
                events = [
                    {
                        "name": "View",
                        "properties": {"dyType": "product-view-v1", "productId": f"sku-{self.rng.randrange(30)}"},
                    }
                ]
            elif roll < 0.80 and cart:
                events, cart = [purchase(cart, f"tx-{dyid}-{time.monotonic_ns()}")], []
                self.purchases += 1
            elif roll < 0.85:
                status, _ = await self.api.call(
                    "POST", "/v2/collect/user/event", self.ing, raw=self.rng.choice(MALFORMED)
                )
                if status not in (0, 400, 413, 422):  # 0: the API was down
                    self.api.server_errors.append(f"malformed body answered {status}")
                continue
            else:  # a batch: a cart change and a custom event
                events = [add_to_cart(cart or ["sku-0"]), {"name": "Custom", "properties": {"x": self.rng.random()}}]
            status, out = await self.api.call("POST", "/v2/collect/user/event", self.ing, self._body(dyid, events))
            if status == 202:
                self.accepted_ids.update(out["event_ids"])
            elif status != 0:  # 0: the API was down; the shop's backend would retry later
                self.api.server_errors.append(f"an event answered {status}: {out}")


# ------------------------------------------------------------------ checks


def drained(url: str) -> tuple[int, int, int]:
    """(active journeys, sends in flight or retrying, undispatched events)."""
    count = select(func.count())
    with Session(make_engine(url)) as s:
        return (
            s.exec(count.select_from(Journey).where(Journey.status == "active")).one(),
            s.exec(count.select_from(Send).where(col(Send.status).in_(["in_flight", "retrying"]))).one(),
            s.exec(count.select_from(Event).where(col(Event.dispatched).is_(False))).one(),
        )


def check_store(url: str, delivered: Counter[str], accepted: set[str]) -> tuple[list[str], dict[str, Any]]:
    problems: list[str] = []
    with Session(make_engine(url)) as session:  # the tables' own types: SQLite keeps times as text
        sends = list(session.exec(select(Send)).all())
        journeys = list(session.exec(select(Journey)).all())
        stored = dict(session.exec(select(Event.id, Event.dispatched)).all())
    lost = accepted - stored.keys()
    problems += [f"{len(lost)} events answered 202 are not stored, e.g. {sorted(lost)[:3]}"] if lost else []
    undispatched = [e for e in accepted & stored.keys() if not stored[e]]
    problems += [f"{len(undispatched)} accepted events never dispatched"] if undispatched else []
    by_key = {s.key: s for s in sends}
    for key, n in delivered.items():
        row = by_key.get(key)
        if row is None:
            problems.append(f"the provider delivered key {key!r}, unknown to the store")
        elif n > 1 and not row.possible_duplicate:
            problems.append(f"silent duplicate: {key} delivered {n} times, not flagged ({row.status})")
    for s in sends:
        if s.status == "accepted" and s.key not in delivered:
            problems.append(f"recorded accepted without a complete 2xx at the provider: {s.key} ({s.provider_status})")
    # One message per step: a permanent failure may fall back to the next channel, once per channel.
    twice = Counter((s.journey_id, s.step_index) for s in sends if s.status == "accepted")
    problems += [f"journey {j} sent step {i} {n} times" for (j, i), n in twice.items() if n > 1]
    per_channel = Counter((s.journey_id, s.step_index, s.channel) for s in sends)
    problems += [f"journey {j} step {i} has {n} {c} sends" for (j, i, c), n in per_channel.items() if n > 1]
    holdouts = {j.id for j in journeys if j.is_control}
    problems += [f"holdout journey {s.journey_id} got a send" for s in sends if s.journey_id in holdouts]
    exited = {j.id: j.ended_at for j in journeys if j.status == "exited" and j.ended_at is not None}
    for s in sends:
        ended = exited.get(s.journey_id)
        if ended is not None and (s.created_at - ended).total_seconds() > 1:
            problems.append(f"send {s.key} began {s.created_at}, after its journey exited at {ended}")
    problems += [f"journey {j.id} still active" for j in journeys if j.status == "active"]
    summary = {
        "journeys": dict(Counter(f"{j.status}{'/' + j.exit_reason if j.exit_reason else ''}" for j in journeys)),
        "sends": dict(
            Counter(f"{s.channel} {s.status}{' (possible duplicate)' if s.possible_duplicate else ''}" for s in sends)
        ),
    }
    return problems, summary


def check_global_cap(url: str) -> list[str]:
    """No person got more than the global cap (5) per channel in any 24 h of their journeys'
    clocks (a reservation's time), across both campaigns: retries, failures giving slots back and
    fallbacks included."""
    with Session(make_engine(url)) as session:
        rows = session.exec(
            select(CapReservation.user_id, CapReservation.channel, CapReservation.reserved_at)
            .join(Send, col(Send.key) == CapReservation.key)
            .where(Send.status == "accepted")
        ).all()
    times: dict[tuple[str, str], list[datetime]] = {}
    for user_id, channel, at in rows:
        times.setdefault((user_id, channel), []).append(at)
    problems = []
    for (user_id, channel), ats in times.items():
        ats.sort()
        over = [a for a, b in zip(ats, ats[CAP:], strict=False) if b - a < timedelta(hours=24)]
        if over:
            problems.append(f"user {user_id} got {CAP + 1}+ {channel} messages within 24 h from {over[0]}")
    return problems


def check_cart_index(url: str) -> list[str]:
    """The cart index holds exactly each person's cart (price-drop and attribute campaigns find
    shoppers through it), and nothing for ids merged into another."""
    with Session(make_engine(url)) as s:
        carts = {u.id: cart_index.skus(u) for u in s.exec(select(User)).all()}
        aliases = set(s.exec(select(UserAlias.alias_id)).all())
        indexed: dict[str, set[str]] = {}
        for user_id, sku in s.exec(select(CartEntry.user_id, CartEntry.sku)).all():
            indexed.setdefault(user_id, set()).add(sku)
    problems = []
    for user_id, cart in carts.items():
        want = set() if user_id in aliases else cart
        if indexed.get(user_id, set()) != want:
            problems.append(f"cart index of {user_id}: {sorted(indexed.get(user_id, set()))} != cart {sorted(want)}")
    return problems


def check_report(url: str, campaign_id: str) -> list[str]:
    """The report as the API serves it (pre-aggregated counters) against the raw rows' report."""
    from api.routes.reports import _campaign, _range, build_report
    from store.tables import Campaign

    with Session(make_engine(url)) as s:
        c = s.get(Campaign, campaign_id)
        assert c is not None
        _, spec = _campaign(s, c.section_id, c.id)
        start, end = _range(c, None, None)
        served, raw = (build_report(s, c, spec, start, end, raw=r) for r in (False, True))
    problems = []
    for part in ("totals", "variations", "steps", "channels"):
        if served[part] != raw[part]:
            problems.append(f"report {part}: counters {served[part]} != raw rows {raw[part]}")
    return problems


def check_logs(stack: Stack) -> tuple[list[str], dict[str, int]]:
    """Tracebacks in the API's and worker's logs, and their WARNING/ERROR lines by kind."""
    problems: list[str] = []
    kinds: Counter[str] = Counter()
    for label in ("worker", "api"):
        path = stack.dir / f"{label}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        at = [n for n, ln in enumerate(lines, 1) if ln.startswith("Traceback")]
        if at:
            problems.append(f"{label} log: {len(at)} tracebacks (the first at line {at[0]})")
        for ln in lines:
            parts = ln.split(" ", 4)
            if len(parts) == 5 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                kinds[f"{label} {parts[2]} {parts[3]} {parts[4][:60]}"] += 1
    return problems, dict(kinds.most_common(12))


# ------------------------------------------------------------------ run


async def kill_repeatedly(
    stack: Stack, label: str, restart: Callable[[], Awaitable[object]], every: float, until: float
) -> int:
    """SIGKILL the `label` process every `every` seconds until `until` and start a new one at once
    (a crash, or a deploy without draining); returns how many times. `every` 0: never."""
    kills = 0
    while every and time.monotonic() + every < until:
        await asyncio.sleep(every)
        for proc in stack.procs:
            if stack.labels[proc.pid] == label and proc.poll() is None:
                proc.kill()
                proc.wait()
        kills += 1
        await restart()
    return kills


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    provider = FaultyProvider(rng)
    stack = Stack(args.database_url)
    stack.env["REJOIN_DELIVERY_TIMEOUT"] = f"PT{DELIVERY_TIMEOUT_S}S"
    stack.env["REJOIN_GLOBAL_CAP_MESSAGES"] = str(CAP)  # the harness lifts it for throughput runs
    api: Api | None = None
    try:
        await stack.start()
        await stack.start_worker()
        await stack.start_api()
        api = Api(stack.api_url)
        shop = Shop(api, rng)
        await shop.open(provider.server)
        users = [await shop.shopper(i, rng.random() >= args.real_share) for i in range(args.users)]
        print(f"{len(users)} shoppers; traffic for {args.seconds:g} s", flush=True)
        t0 = time.monotonic()
        shoppers = asyncio.gather(*(shop.browse(d, cart, t0 + args.seconds, args.mean_gap) for d, cart in users))
        until = t0 + args.seconds
        kills = {
            "worker": asyncio.create_task(
                kill_repeatedly(stack, "worker", stack.start_worker, args.kill_worker_every, until)
            ),
            "api": asyncio.create_task(kill_repeatedly(stack, "api", stack.start_api, args.kill_api_every, until)),
            "temporal server": asyncio.create_task(
                kill_repeatedly(stack, "temporal server", stack.restart_server, args.kill_server_every, until)
            ),
        }
        await shoppers
        killed = {label: await task for label, task in kills.items()}
        print(f"killed (SIGKILL, restarted): {killed}", flush=True)
        print(f"traffic done in {time.monotonic() - t0:.0f} s; API answers {dict(api.statuses)}", flush=True)
        deadline = time.monotonic() + (args.drain or (1500 if args.real_share else 300))
        while (left := drained(stack.database_url)) != (0, 0, 0) and time.monotonic() < deadline:
            active, in_flight, undispatched = left
            print(
                f"draining: {active} journeys active, {in_flight} sends in flight, {undispatched} events undispatched",
                flush=True,
            )
            await asyncio.sleep(10)
        problems, summary = check_store(stack.database_url, provider.delivered(), shop.accepted_ids)
        problems += [p for cid in shop.campaign_ids for p in check_report(stack.database_url, cid)]
        problems += check_global_cap(stack.database_url)
        problems += check_cart_index(stack.database_url)
        log_problems, log_kinds = check_logs(stack)
        problems += log_problems + api.server_errors
        result = {"soak": "rejoin", "seed": args.seed, "users": args.users, "purchases": shop.purchases,
                  "killed": killed,
                  "api": dict(api.statuses), "provider": dict(provider.answered), **summary,
                  "log_warnings": log_kinds, "problems": problems}  # fmt: skip
        print("\n".join(f"PROBLEM: {p}" for p in problems[:50]) or "no problems")
        print(json.dumps(result, default=str))
        return 1 if problems else 0
    finally:
        if api is not None:
            await api.http.close()
        provider.server.stop()
        if args.keep:
            print(f"kept: {stack.dir} (logs, Temporal database), {stack.database_url}")
        else:
            stack.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--database-url", help="PostgreSQL server URL (a scratch database is made); default SQLite")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60, help="how long the shoppers browse")
    p.add_argument("--mean-gap", type=float, default=4, help="mean seconds between a shopper's visits")
    p.add_argument("--real-share", type=float, default=0.0, help="share of users that are not test users (real waits)")
    p.add_argument(
        "--drain", type=float, default=0, help="seconds to wait for journeys to end (default 300, 1500 with real users)"
    )
    p.add_argument(
        "--kill-worker-every",
        type=float,
        default=0,
        help="SIGKILL and restart the worker this often (seconds) during the traffic",
    )
    p.add_argument("--kill-api-every", type=float, default=0,
                   help="SIGKILL and restart the API this often (seconds) during the traffic")  # fmt: skip
    p.add_argument("--kill-server-every", type=float, default=0,
                   help="SIGKILL and restart the Temporal dev server (same database file) this often")  # fmt: skip
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="keep the run's folder and database to look at")
    return asyncio.run(soak(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
