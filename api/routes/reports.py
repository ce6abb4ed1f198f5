"""Campaign reports: JSON, CSV (formula-injection safe) and an HTML page with inline SVG charts.

Time range semantics (seeds, cohort): the users who FIRST triggered the campaign within
[from, to), and all the sends, clicks, impressions and purchases they generated for it (at any
time). The maths is in domain/reports.py; docs/reports.md explains every figure.
"""

from __future__ import annotations

import base64
import binascii
import csv
import html
import io
import json
import logging
import math
from datetime import datetime, timedelta
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from api.deps import Management, StateDep
from api.errors import NotFound, Unprocessable
from api.report_times import ReportTime, ReportZone, known_zone, local_days, within_report_bounds
from domain.campaign import CampaignSpec, Variation
from domain.reports import (
    METRICS,
    Aggregate,
    Bucket,
    Enrolled,
    aggregate,
    arms_for,
    holdout_comparison,
    money,
    winner,
)
from domain.tracking import Signer
from store import report_links
from store import reports as q
from store.campaigns import load_spec
from store.delivery_health import delivery_summary, failed_sends
from store.tables import Campaign, CampaignVersion, now_utc

# No prefix: the signed report page lives at /r/{token}, the rest under /api/v1.
log = logging.getLogger(__name__)
router = APIRouter(tags=["reports"])
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'", "Cache-Control": "no-store"}


def _campaign(s: Session, section_id: str, campaign_id: str) -> tuple[Campaign, CampaignSpec]:
    c = s.get(Campaign, campaign_id)
    if c is None or c.section_id != section_id:
        raise NotFound("no such campaign", field="campaign_id")
    return c, load_spec(s, c.id, c.version)


def build_report(
    s: Session, c: Campaign, spec: CampaignSpec, start: datetime, end: datetime, *, raw: bool = False,
    tz: str | None = None,
) -> dict[str, Any]:
    """The report body; `raw` computes it from the raw tables only (the reference, benchmarks);
    `tz`: the IANA time zone of the day series (None: UTC days)."""
    window = spec.settings.attribution_window
    data = q.load_raw(s, c.section_id, c.id, start, end) if raw else q.load(s, c.section_id, c.id, start, end, window)
    agg = aggregate(data, window)
    by_currency = q.currency_revenue(data, agg)
    in_data = {*agg.variations, *(v for v, _ in agg.channels), *(v for v, _ in agg.steps)}
    defined = _definitions(s, c, spec, in_data)
    step_names = _step_names(s, c, {key for key in agg.steps}, defined)
    order = [v.id for v in spec.variations] + sorted(set(agg.variations) - {v.id for v in spec.variations})
    variations = []
    for vid in order:
        bucket = agg.variations.get(vid)
        table = (bucket or Bucket(enrolled=Enrolled())).table()  # a variation nobody reached yet: every metric at 0
        known = defined.get(vid)
        name, control = (known.name, known.control) if known else (vid, False)
        variations.append({"id": vid, "name": name, "control": control, **table,
                           "revenue_by_currency": by_currency.in_revenue.get(vid, {}),
                           "revenue_other_currencies": by_currency.apart.get(vid, {})})  # fmt: skip
    channels = [
        {"variation_id": v, "channel": ch, **b.table()} for (v, ch), b in sorted(agg.channels.items())
    ]
    steps = [
        {"variation_id": v, "step_index": i, "step_name": step_names.get((v, i), str(i)), **b.table()}
        for (v, i), b in sorted(agg.steps.items())
    ]
    compared = [v.id for v in spec.variations if not v.control]
    metric = spec.settings.primary_metric
    verdict = winner(metric, arms_for(metric, agg.variations, compared), baseline=compared[0] if compared else None)
    totals = {m: _total(v["metrics"].get(m, {}).get("count", 0) for v in variations) for m in METRICS}
    enrolled_rows = {v["id"]: v["enrolled_conversions"] for v in variations}
    enrolled_by_currency = q.currency_totals({v: e["revenue_by_currency"] for v, e in enrolled_rows.items()})
    enrolled_totals = {
        **{k: _total(e[k] for e in enrolled_rows.values()) for k in ("purchases", "buyers", "revenue")},
        "revenue_by_currency": enrolled_by_currency,
        "revenue_other_currencies": q.currency_totals(
            {v: e["revenue_other_currencies"] for v, e in enrolled_rows.items()}
        ),
    }
    # Every arm against the holdout on enrolled-user conversions, the one rule that measures a holdout
    # (click attribution gives it nothing to attribute): the current holdout, else a removed one.
    holdout_id = next((vid for vid in order if vid in defined and defined[vid].control), None)
    arm_ids = [vid for vid in order if not (vid in defined and defined[vid].control)]
    holdout = holdout_comparison(agg.variations, arm_ids, holdout_id)
    series, series_warnings = _series(agg, tz)
    email = [ch for ch in channels if ch["channel"] == "email"]
    imp = sum(ch["metrics"]["impressions"]["count"] for ch in email)
    summed = q.currency_totals(by_currency.in_revenue)
    body: dict[str, Any] = finite_only({
        "campaign": {"id": c.id, "name": c.name, "status": c.status, "primary_metric": metric,
                     "attribution_window_hours": window / timedelta(hours=1)},  # fmt: skip
        "range": {"from": start.isoformat(), "to": end.isoformat()},
        "totals": {"users_triggered": sum(data.users.values()), **totals,
                   "ctr": (sum(ch["metrics"]["clicks"]["count"] for ch in email) / imp) if imp else None,
                   "revenue_by_currency": summed,
                   "revenue_other_currencies": q.currency_totals(by_currency.apart),
                   "enrolled_conversions": enrolled_totals},  # fmt: skip
        "revenue_currency": data.currency,
        "variations": variations,
        "channels": channels,
        "steps": steps,
        "winner": verdict,
        "holdout_comparison": holdout,
        "series": series,
        "warnings": _currency_warnings(summed, enrolled_by_currency) + series_warnings,
    }, where=f"campaign {c.id}")
    return body


def _series(agg: Aggregate, tz: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The day series (send requests, attributed revenue) by UTC day, or by local day of `tz`
    made of the hourly figures (`local_days`), and a warning when that zone's days are not exact."""
    if tz is None or tz == "UTC":
        return {"time_zone": "UTC", "sends_by_day": agg.sends_by_day, "revenue_by_day": agg.revenue_by_day,
                "exact_days": True}, []  # fmt: skip
    zone = ZoneInfo(tz)
    sends, sends_exact = local_days(agg.sends_by_hour, zone)
    revenue, revenue_exact = local_days(agg.revenue_by_hour, zone)
    exact = sends_exact and revenue_exact
    series = {"time_zone": tz, "sends_by_day": {day: int(n) for day, n in sends.items()},
              "revenue_by_day": {day: money(v) for day, v in revenue.items()}, "exact_days": exact}  # fmt: skip
    if exact:
        return series, []
    return series, [{
        "code": "approximate_days",
        "time_zone": tz,
        "message": f"{tz} is offset from UTC by a fraction of an hour: figures are kept per UTC hour, so each hour "
                   "counts in the local day it starts in, and the first minutes after local midnight fall in the "
                   "previous day",
    }]  # fmt: skip


def _currency_warnings(attributed: Mapping[str, float], enrolled: Mapping[str, float]) -> list[dict[str, Any]]:
    """One warning when a revenue figure adds up values of more than one currency (no report
    currency set: Rejoin cannot convert): the click-attributed revenue, the enrolled-user
    conversions' revenue, or both (`figures`); `currencies`: every currency of those sums.
    Purchases sent without a currency are not counted as one more."""
    sums = {"revenue": attributed, "enrolled_conversions.revenue": enrolled}
    labels = {"revenue": "revenue", "enrolled_conversions.revenue": "enrolled-user revenue"}
    named = {figure: sorted(cur for cur in values if cur != q.NO_CURRENCY) for figure, values in sums.items()}
    mixed = [figure for figure, currencies in named.items() if len(currencies) > 1]
    if not mixed:
        return []
    currencies = sorted({cur for figure in mixed for cur in named[figure]})
    what = " and ".join(labels[figure] for figure in mixed) + (" add" if len(mixed) > 1 else " adds")
    holdout = " (revenue per user is not compared with the holdout)" if "enrolled_conversions.revenue" in mixed else ""
    return [{
        "code": "mixed_currencies",
        "currencies": currencies,
        "figures": mixed,
        "message": f"{what} up values in {', '.join(currencies)} as if they were one currency{holdout}; "
                   "set the section's report currency (PATCH /api/v1/section `currency`) to count one only",
    }]  # fmt: skip


def _total(counts: Iterable[float]) -> float | int:
    """A sum of per-variation counts: whole, or money to the cent (float sums carry noise)."""
    total = sum(counts)
    return int(total) if float(total).is_integer() else money(total)


def finite_only(value: Any, *, where: str = "report") -> Any:
    """`value` with every NaN or infinite float replaced by None (logged).

    JSON has no NaN: one in a report made the whole response a 500, and the HTML showed "nan%".
    The maths keeps its figures finite (domain/reports.py); this is the last guard, so a defect
    there costs one empty cell, never the report.
    """
    if isinstance(value, float) and not math.isfinite(value):
        log.warning("non-finite figure in the report of %s, shown as null", where)
        return None
    if isinstance(value, dict):
        return {k: finite_only(v, where=where) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_only(v, where=where) for v in value]
    return value


def _definitions(s: Session, c: Campaign, spec: CampaignSpec, ids: set[str]) -> dict[str, Variation]:
    """Each variation of the latest version, and each of `ids` it no longer has as the most recent
    earlier version defined it: a variation removed by an edit keeps its name and its control flag
    in reports of the users it had (else an old holdout would show as a normal variation)."""
    found = {v.id: v for v in spec.variations}
    missing = ids - set(found)
    if not missing:
        return found
    for version in reversed(_older_versions(s, c)):
        for v in load_spec(s, c.id, version).variations:
            if v.id in missing:
                found[v.id] = v
                missing.discard(v.id)
        if not missing:
            break
    return found


def _older_versions(s: Session, c: Campaign) -> list[int]:
    """The campaign's versions before its current one, oldest first."""
    version_col = col(CampaignVersion.version)
    older = select(version_col).where(CampaignVersion.campaign_id == c.id, version_col < c.version)
    return list(s.exec(older.order_by(version_col)).all())


def _step_names(
    s: Session, c: Campaign, keys: set[tuple[str, int]], defined: Mapping[str, Variation]
) -> dict[tuple[str, int], str]:
    """The label of each reported step (variation, index). Figures are kept by index, so an edit
    that inserted, removed or renamed a step gives one index several names across versions: the
    label then names them all, oldest first ("A1 / Welcome"), rather than put one version's
    figures under another's step. Versions are read only when the campaign has more than one."""
    names: dict[tuple[str, int], list[str]] = {}
    specs = [load_spec(s, c.id, n) for n in _older_versions(s, c)] if c.version > 1 else []
    for variations in [*(spec.variations for spec in specs), list(defined.values())]:
        for v in variations:
            for i, st in enumerate(v.steps):
                if (v.id, i) in keys and st.name not in names.setdefault((v.id, i), []):
                    names[(v.id, i)].append(st.name)
    return {key: " / ".join(found) for key, found in names.items()}


def _range(
    c: Campaign, start: datetime | None, end: datetime | None, given_in: str = "query"
) -> tuple[datetime, datetime]:
    """The report's [from, to): defaults filled in; `given_in` ("query" or "body") locates a refusal."""
    end = end or now_utc() + timedelta(seconds=1)
    if start is None and end <= c.created_at:
        # 'from' defaults to the campaign's creation; say so, or the refusal names a value never given.
        raise Unprocessable(
            f"'to' must be after the campaign's creation ({c.created_at.isoformat()}), the default 'from'",
            field=f"{given_in}.to",
        )
    start = start or c.created_at
    if end <= start:
        raise Unprocessable("'to' must be after 'from'", field=f"{given_in}.to")
    return start, end


def _load(
    state: StateDep, section_id: str, campaign_id: str, start: datetime | None, end: datetime | None,
    tz: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    with state.store.session() as s:
        c, spec = _campaign(s, section_id, campaign_id)
        return build_report(s, c, spec, *_range(c, start, end), tz=tz)


TZ_DESCRIPTION = "IANA time zone of the day series (e.g. Europe/Paris); default: UTC days"


@router.get("/api/v1/campaigns/{campaign_id}/report", response_model=None)
def report(
    campaign_id: str,
    principal: Management,
    state: StateDep,
    start: Annotated[ReportTime | None, Query(alias="from", description="ISO 8601 with zone; default: campaign creation")] = None,
    end: Annotated[ReportTime | None, Query(alias="to", description="ISO 8601 with zone; default: now")] = None,
    format: Literal["json", "csv"] = "json",
    tz: Annotated[ReportZone | None, Query(description=TZ_DESCRIPTION)] = None,
) -> dict[str, Any] | Response:
    """The campaign report for [from, to); `format=csv` for a spreadsheet-safe CSV."""
    body = _load(state, principal.section_id, campaign_id, start, end, tz)
    if format == "csv":
        return Response(CSV_BOM + to_csv(body), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="report-{campaign_id}.csv"'})  # fmt: skip
    return body


@router.get("/api/v1/campaigns/{campaign_id}/report.html", response_class=HTMLResponse)
def report_page(
    campaign_id: str,
    principal: Management,
    state: StateDep,
    start: Annotated[ReportTime | None, Query(alias="from", description="ISO 8601 with zone; default: campaign creation")] = None,
    end: Annotated[ReportTime | None, Query(alias="to", description="ISO 8601 with zone; default: now")] = None,
    tz: Annotated[ReportZone | None, Query(description=TZ_DESCRIPTION)] = None,
) -> HTMLResponse:
    body = _load(state, principal.section_id, campaign_id, start, end, tz)
    return HTMLResponse(to_html(body), headers=PAGE_HEADERS)


@router.get("/api/v1/campaigns/{campaign_id}/deliveries")
def deliveries(
    campaign_id: str,
    principal: Management,
    state: StateDep,
    start: Annotated[ReportTime | None, Query(alias="from", description="ISO 8601 with zone; default: campaign creation")] = None,
    end: Annotated[ReportTime | None, Query(alias="to", description="ISO 8601 with zone; default: now")] = None,
) -> dict[str, Any]:
    """Delivery health: the campaign's provider calls made in [from, to) by channel and status
    (accepted, failed, in_flight, retrying; possible duplicates), and the most frequent failure reasons,
    addresses masked; test users' sends, their duplicates and failure reasons are counted apart."""
    with state.store.session() as s:
        c, _ = _campaign(s, principal.section_id, campaign_id)
        return delivery_summary(s, c.id, *_range(c, start, end))


@router.get("/api/v1/campaigns/{campaign_id}/deliveries/failed")
def failed_deliveries(
    campaign_id: str,
    principal: Management,
    state: StateDep,
    start: Annotated[ReportTime | None, Query(alias="from", description="ISO 8601 with zone; default: campaign creation")] = None,
    end: Annotated[ReportTime | None, Query(alias="to", description="ISO 8601 with zone; default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(max_length=1000, description="the previous page's `next`")] = None,
) -> dict[str, Any]:
    """The campaign's failed sends created in [from, to), oldest first: journey (`workflow_id` for
    Temporal), user, step, channel, the provider's answer (addresses masked) and when; `next` asks for
    the following page (`after=`), null on the last. Test users' sends are listed with `test_user`."""
    position = _failed_cursor(after) if after is not None else None
    with state.store.session() as s:
        c, _ = _campaign(s, principal.section_id, campaign_id)
        page, last = failed_sends(s, c.id, *_range(c, start, end), limit, position)
    nxt = None
    if last is not None:
        nxt = base64.urlsafe_b64encode(json.dumps([last[0].isoformat(), last[1]]).encode()).decode()
    return {"failures": page, "next": nxt}


def _failed_cursor(after: str) -> tuple[datetime, str]:
    """The (created_at, send key) a `next` of `failed_deliveries` stands for; 422 if it is none."""
    try:
        at, key = json.loads(base64.urlsafe_b64decode(after.encode()))
        when = datetime.fromisoformat(at)
        if not isinstance(key, str) or when.tzinfo is None:
            raise ValueError(after)
        return when, key
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise Unprocessable("not a page position this API gave ('next')", field="query.after") from None


class ReportLinkIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    valid_hours: int = Field(24, ge=1, le=24 * 30)
    start: ReportTime | None = Field(None, alias="from")
    end: ReportTime | None = Field(None, alias="to")
    tz: ReportZone | None = Field(None, description=TZ_DESCRIPTION)


@router.post("/api/v1/campaigns/{campaign_id}/report-link")
def report_link(
    campaign_id: str, principal: Management, state: StateDep, body: ReportLinkIn | None = None
) -> dict[str, str]:
    """A signed, expiring URL of the HTML report, to open in a browser or share without a key
    (no body: the defaults, 24 hours over the whole campaign)."""
    body = body or ReportLinkIn()
    with state.store.session() as s:
        c, _ = _campaign(s, principal.section_id, campaign_id)
        _range(c, body.start, body.end, given_in="body")
    issued = now_utc()
    expires = issued + timedelta(hours=body.valid_hours)
    data = {"c": campaign_id, "s": principal.section_id, "e": int(expires.timestamp()),
            "i": int(issued.timestamp() * 1000),  # ms: a link made right after a revocation works
            "f": body.start.isoformat() if body.start else None, "t": body.end.isoformat() if body.end else None,
            **({"z": body.tz} if body.tz else {})}  # fmt: skip
    token = Signer(state.settings.secret_keys).sign("r", data)
    return {"url": f"{state.settings.effective_public_url}/r/{token}", "expires_at": expires.isoformat()}


@router.delete("/api/v1/campaigns/{campaign_id}/report-links")
def revoke_report_links(campaign_id: str, principal: Management, state: StateDep) -> dict[str, str]:
    """Revoke every report link of the campaign made so far; links made afterwards work."""
    with state.store.session() as s:
        _campaign(s, principal.section_id, campaign_id)
        at = report_links.revoke(s, campaign_id)
    return {"revoked_before": at.isoformat()}


@router.get("/r/{token}", response_class=HTMLResponse, include_in_schema=False)
def shared_report(token: str, state: StateDep) -> HTMLResponse:
    data = Signer(state.settings.secret_keys).verify("r", token)
    if data is None or not isinstance(data.get("e"), int) or data["e"] < now_utc().timestamp():
        return HTMLResponse("This report link is not valid or has expired.", status_code=404)
    issued = data.get("i") if isinstance(data.get("i"), int) else None
    with state.store.session() as s:
        if report_links.revoked(s, str(data["c"]), issued):
            return HTMLResponse("This report link is not valid or has expired.", status_code=404)
    try:  # links signed before the bounds were checked may carry a range no report can take
        start, end = (within_report_bounds(datetime.fromisoformat(data[k])) if data.get(k) else None for k in "ft")
        tz = known_zone(str(data["z"])) if data.get("z") else None  # a zone this host no longer knows: refused
    except (TypeError, ValueError):
        return HTMLResponse("This report link is not valid or has expired.", status_code=404)
    body = _load(state, str(data["s"]), str(data["c"]), start, end, tz)
    return HTMLResponse(to_html(body), headers={**PAGE_HEADERS, "Referrer-Policy": "no-referrer"})


@router.get("/api/v1/reports/campaigns")
def campaign_list(principal: Management, state: StateDep) -> list[dict[str, Any]]:
    """Every campaign with its send requests over the last 7 days."""
    with state.store.session() as s:
        rows = s.exec(select(Campaign).where(Campaign.section_id == principal.section_id).order_by(col(Campaign.created_at))).all()
        counts = q.sends_since(s, [c.id for c in rows], now_utc() - timedelta(days=7))
        return [{"id": c.id, "name": c.name, "type": c.type, "status": c.status, "sends_last_7_days": counts.get(c.id, 0)}
                for c in rows]  # fmt: skip


# ---------------------------------------------------------------------------------- CSV

METRIC_COLUMNS = METRICS  # send requests, failed sends, provider opt-outs, hits, attributed events
# Enrolled-user conversions and the uplift over the holdout: variation rows only, the last columns.
ENROLLED_COLUMNS = ("purchases", "buyers", "conversion_rate", "revenue", "revenue_per_user")
UPLIFT_COLUMNS = (
    ("conversion_rate", "conversion_uplift_vs_holdout"),
    ("revenue_per_user", "revenue_uplift_vs_holdout"),
)
# The enrolled-user revenue per currency (compact, as revenue_by_currency): variation rows only, appended last.
ENROLLED_CURRENCY_COLUMNS = ("revenue_by_currency", "revenue_other_currencies")
# Excel reads a CSV without a byte order mark in the local code page ("CafÃ©"); with it, as UTF-8.
CSV_BOM = "\ufeff"
FORMULA_STARTS = ("=", "+", "-", "@")


def safe_cell(value: Any) -> Any:
    """Text a spreadsheet could run as a formula, prefixed with a quote: a cell led by a tab or
    CR, or whose first non-blank character is = + - @ (spreadsheets skip leading spaces: " =1+1")."""
    if isinstance(value, str) and (value[:1] in ("\t", "\r") or value.lstrip()[:1] in FORMULA_STARTS):
        return "'" + value
    return value


def _rounded(value: float | None, digits: int) -> float | str:
    return "" if value is None else round(value, digits)


def to_csv(body: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    header = ["section", "variation", "variation_name", "channel", "step", "users", "ctr"]
    for m in METRIC_COLUMNS:
        header += [m, f"{m}_per_user"]
    enrolled = [f"enrolled_{k}" for k in ENROLLED_COLUMNS]
    uplifts = [f"{name}_{end}" for _, name in UPLIFT_COLUMNS for end in ("low", "high")]
    per_currency = [f"enrolled_{k}" for k in ENROLLED_CURRENCY_COLUMNS]
    w.writerow([*header, "revenue_by_currency", "revenue_other_currencies", *enrolled, *uplifts, *per_currency])
    names = {v["id"]: v["name"] for v in body["variations"]}
    vs_holdout = _uplifts_vs_holdout(body)

    def row(section: str, r: dict[str, Any], vid: str, channel: str = "", step: str = "") -> None:
        cells: list[Any] = [section, vid, names.get(vid, vid), channel, step, r["users"], _rounded(r["ctr"], 4)]
        for m in METRIC_COLUMNS:
            metric = r["metrics"].get(m, {"count": 0, "per_user": 0.0})
            cells += [metric["count"], _rounded(metric["per_user"], 4)]
        cells += [_per_currency(r.get("revenue_by_currency")), _per_currency(r.get("revenue_other_currencies"))]
        if section == "variation":
            conv = r.get("enrolled_conversions") or {}
            cells += [_rounded(conv.get(k), 4) for k in ENROLLED_COLUMNS]
            for metric, _ in UPLIFT_COLUMNS:
                uplift = vs_holdout.get((metric, vid)) or {}
                cells += [_rounded(uplift.get("low"), 4), _rounded(uplift.get("high"), 4)]
            cells += [_per_currency(conv.get(k)) for k in ENROLLED_CURRENCY_COLUMNS]
        else:  # channel and step rows: every row has every column
            cells += [""] * (len(ENROLLED_COLUMNS) + 2 * len(UPLIFT_COLUMNS) + len(ENROLLED_CURRENCY_COLUMNS))
        w.writerow([safe_cell(x) for x in cells])

    for v in body["variations"]:
        row("variation", v, v["id"])
    for ch in body["channels"]:
        row("channel", ch, ch["variation_id"], channel=ch["channel"])
    for st in body["steps"]:
        row("step", st, st["variation_id"], step=st["step_name"])
    return out.getvalue()


def _uplifts_vs_holdout(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any] | None]:
    """(metric, variation id) -> its uplift interval over the holdout (None: not measurable)."""
    metrics = body.get("holdout_comparison", {}).get("metrics", {})
    return {(m, row["id"]): row["uplift"] for m, block in metrics.items() for row in block["variations"]}


def _per_currency(values: Mapping[str, float | None] | None) -> str:
    """Purchase value per currency, compact: "EUR 4627.92; USD 776.34" (none: empty)."""
    return "; ".join(f"{cur} {_shown(value, '{:.2f}')}" for cur, value in (values or {}).items())


# --------------------------------------------------------------------------------- HTML


def _shown(value: float | None, fmt: str) -> str:
    """A figure as text; a missing one (None) as a dash."""
    return "–" if value is None else fmt.format(value)


def _bars(
    title: str, figures: Mapping[str, float | None], color: str, fmt: str = "{:g}", labels: dict[str, str] | None = None
) -> str:
    """A small inline SVG bar chart (no scripts, no CDN): one bar per key of `series`, labelled by
    `labels` (the key when absent), so two keys with the same label still get a bar each."""
    e = html.escape
    series = {k: v for k, v in figures.items() if v is not None}
    labels = labels or {}
    if not series:
        return f"<figure><figcaption>{e(title)}</figcaption><p class=empty>No data in this range.</p></figure>"
    width, height, pad = 640, 180, 28
    top = max(series.values()) if max(series.values()) > 0 else 1
    n = len(series)
    bw = (width - 2 * pad) / n
    bars = []
    for i, (key, value) in enumerate(series.items()):
        label = labels.get(key, key)
        bh = (height - 2 * pad) * max(value, 0) / top
        x, y = pad + i * bw, height - pad - bh
        bars.append(
            f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{max(bw - 4, 1):.1f}" height="{bh:.1f}" fill="{color}">'
            f"<title>{e(label)}: {e(fmt.format(value))}</title></rect>"
        )
        if n <= 14 or i % max(n // 7, 1) == 0:
            short = label[:12] if key in labels else label[-5:]  # a name's start; a day's "MM-DD"
            bars.append(f'<text x="{x + bw / 2:.1f}" y="{height - 8}" text-anchor="middle">{e(short)}</text>')
    return (f'<figure><figcaption>{e(title)} (max {e(fmt.format(top))})</figcaption>'
            f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">{"".join(bars)}'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/></svg></figure>')  # fmt: skip


# Purchases and add-to-carts in the tables are attributed to a click: a holdout, sent nothing, has none
# by construction (its figures are the holdout comparison's).
CLICK_ATTRIBUTED = ("purchases", "revenue", "add_to_carts")


def _metric_label(m: str) -> str:
    label = m.replace("_", " ").title()
    return f"{label} (click-attributed)" if m in CLICK_ATTRIBUTED else label


def _named(rows: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of the channel and step tables with their variation's name (its id if it has none), as
    the variation and winner tables show it."""
    return [r | {"variation": names.get(r["variation_id"], r["variation_id"])} for r in rows]


def _table(rows: list[dict[str, Any]], first: list[tuple[str, str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(t)}</th>" for _, t in first) + "<th>Users</th><th>CTR</th>" + "".join(
        f"<th>{e(_metric_label(m))}<br><small>per user</small></th>" for m in METRIC_COLUMNS
    )
    body = []
    for r in rows:
        cells = "".join(f"<td>{e(str(r.get(k, '')))}</td>" for k, _ in first)
        cells += f"<td>{r['users']}</td><td>{_shown(r['ctr'], '{:.1%}')}</td>"
        for m in METRIC_COLUMNS:
            metric = r["metrics"].get(m, {"count": 0, "per_user": 0.0})
            count, per_user = _shown(metric["count"], "{}"), _shown(metric["per_user"], "{:.3f}")
            cells += f"<td>{e(count)}<br><small>{per_user}</small></td>"
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _uplift_text(row: dict[str, Any], verdict: dict[str, Any]) -> str:
    """The uplift interval; the baseline's row says so; none when the baseline's mean is 0."""
    uplift = row["uplift_vs_baseline"]
    if uplift is None or uplift.get("low") is None or uplift.get("high") is None:
        return "baseline" if row["id"] == verdict.get("baseline") else "–"
    return f"{uplift['low']:+.1%} … {uplift['high']:+.1%}"


def _holdout_html(body: dict[str, Any]) -> str:
    """The holdout comparison: every arm's enrolled-user conversions beside the holdout's, each
    arm's uplift over it and the probability it beats it; or why it is not measurable. Below the
    winner's minimum sample (`not_enough_data`) the counts and rates only, and the same caution
    as the winner's."""
    e = html.escape
    comparison = body.get("holdout_comparison") or {}
    intro = f"<p class=muted>Measured the same way for every arm: {e(str(comparison.get('rule', '')))}.</p>"
    if comparison.get("status") not in ("measured", "not_enough_data"):
        return f"{intro}<p class=verdict>Uplift vs holdout: not measurable: {e(str(comparison.get('reason')))}.</p>"
    if comparison["status"] == "not_enough_data":
        reason = e(str(comparison.get("reason")))
        intro += ("<p class=verdict>Not enough data to compare the arms with the holdout yet.</p>"
                  f"<p class=muted>No uplift or probability is given ({reason}).</p>")  # fmt: skip
    metrics = comparison["metrics"]
    by_arm = {(m, row["id"]): row for m, block in metrics.items() for row in block["variations"]}
    notes = "".join(
        f"<p class=muted>{e(label)}: not measurable: {e(str(block['reason']))}.</p>"
        for label, block in (("Conversion rate", metrics["conversion_rate"]),
                             ("Revenue per user", metrics["revenue_per_user"]))
        if block["status"] == "not_measurable"
    )  # fmt: skip
    rows = []
    revenue = metrics["revenue_per_user"]
    for v in body["variations"]:
        conv = v.get("enrolled_conversions") or {}
        name = e(str(v["name"])) + (" <small>(holdout)</small>" if v["id"] == comparison["holdout"] else "")
        cells = [name, str(v["users"]), str(conv.get("buyers", 0)), _shown(conv.get("conversion_rate"), "{:.2%}")]
        for metric, value_fmt in (("conversion_rate", None), ("revenue_per_user", "{:,.2f}")):
            row = by_arm.get((metric, v["id"]))
            if value_fmt is not None:  # the comparison's figure: none when revenue mixes currencies
                per_user = revenue["holdout"] if v["id"] == comparison["holdout"] else (row or {}).get("value")
                cells.append(_shown(per_user, value_fmt))
            if row is None:  # the holdout itself
                cells += ["holdout", "–"] if v["id"] == comparison["holdout"] else ["–", "–"]
                continue
            if row.get("status") == "not_enough_data" and metrics[metric]["status"] != "not_measurable":
                cells += ["–", "not enough data"]  # a value, but no claim on so few users
                continue
            uplift = row["uplift"]
            interval = "–" if uplift is None else f"{uplift['low']:+.1%} … {uplift['high']:+.1%}"
            cells += [interval, _shown(row["probability_better"], "{:.1%}")]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("<tr><th>Variation</th><th>Users</th><th>Buyers</th><th>Conversion rate</th><th>Uplift vs holdout "
            "(95% interval)</th><th>Probability better</th><th>Revenue per user</th><th>Uplift vs holdout (95% "
            "interval)</th><th>Probability better</th></tr>")  # fmt: skip
    totals = body["totals"].get("enrolled_conversions") or {}
    currencies = "".join(
        f"<p class=muted>Enrolled-user revenue by currency: {e(_per_currency(totals[k]))}{e(note)}</p>"
        for k, note in (("revenue_by_currency", ""), ("revenue_other_currencies", " (not in revenue)"))
        if totals.get(k)
    )  # fmt: skip
    return f"{intro}{notes}<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>{currencies}"


def _revenue_label(body: dict[str, Any]) -> str:
    """"Revenue (EUR)" when the section counts one currency, so an exported page says what it adds up."""
    currency = body.get("revenue_currency")
    return f"Revenue ({currency})" if currency else "Revenue"


def to_html(body: dict[str, Any]) -> str:
    e = html.escape
    c, t, w = body["campaign"], body["totals"], body["winner"]
    metric = c["primary_metric"]
    # Keyed by id, labelled by name: two variations may share a name and must not share a bar.
    per_user = {
        v["id"]: (v["ctr"] or 0.0) if metric == "ctr" else v["metrics"].get(metric, {}).get("per_user", 0.0)
        for v in body["variations"]
    }
    names = {v["id"]: str(v["name"]) for v in body["variations"]}
    window_hours = _shown(c["attribution_window_hours"], "{:g}")
    zone = str(body["series"].get("time_zone", "UTC"))
    verdict = {
        "winner": f"Winner: <b>{e(names.get(str(w.get('winner')), str(w.get('winner'))))}</b>",
        "no_winner_yet": "No winner yet: no variation is at least 95% likely to be best.",
        "not_enough_data": "Not enough data to call a winner yet.",
        "single_variation": "Only one variation is compared.",
    }[w["status"]]
    prob_rows = "".join(
        f"<tr><td>{e(names.get(r['id'], r['id']))}</td><td>{_shown(r['probability_to_be_best'], '{:.1%}')}</td>"
        f"<td>{_uplift_text(r, w)}</td></tr>"
        for r in w.get("variations", [])
    )  # fmt: skip
    kpis = "".join(
        f"<div class=kpi><span>{e(label)}</span><b>{e(value)}</b></div>"
        for label, value in [
            ("Users triggered", str(t["users_triggered"])), ("Send requests", str(t["send_requests"])),
            ("Failed sends", str(t["failed_sends"])), ("Possibly delivered", str(t.get("possibly_delivered", 0))),
            ("Provider opt-outs", str(t["provider_opt_outs"])),
            ("Clicks", str(t["clicks"])), ("CTR (email)", _shown(t["ctr"], "{:.1%}")),
            ("Purchases", str(t["purchases"])), (_revenue_label(body), _shown(t["revenue"], "{:,.2f}")),
        ]
    )  # fmt: skip
    currencies = "".join(
        f"<p class=muted>Revenue by currency: {e(_per_currency(t[k]))}{e(note)}</p>"
        for k, note in (("revenue_by_currency", ""), ("revenue_other_currencies", " (not in revenue)"))
        if t.get(k)
    )  # fmt: skip
    warnings = "".join(f"<p class=warning>{e(str(w_.get('message', '')))}</p>" for w_ in body.get("warnings", []))
    style = """body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{margin:0}small,.muted{color:#666}.kpis{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.kpi{background:#f4f6fb;border-radius:8px;padding:.6rem 1rem;min-width:120px}.kpi span{display:block;color:#555;font-size:12px}
.kpi b{font-size:20px}table{border-collapse:collapse;margin:.5rem 0 1.5rem;width:100%}
th,td{border-bottom:1px solid #e3e3e3;padding:.35rem .5rem;text-align:right}th:first-child,td:first-child{text-align:left}
figure{margin:1rem 0}svg{width:100%;max-width:640px;font-size:10px;fill:#555}.verdict{font-size:16px;margin:.5rem 0}
.warning{background:#fff4e0;border-left:4px solid #d58b3b;padding:.4rem .8rem}"""
    return f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(c['name'])} – report</title>
<style>{style}</style></head><body>
<h1>{e(c['name'])}</h1><p class=muted>{e(body['range']['from'])} → {e(body['range']['to'])} · primary metric: {e(metric)}
· attribution window {window_hours} h · users counted when they first triggered in this range</p>
<div class=kpis>{kpis}</div>
<p class=muted>Purchases and revenue here are click-attributed (to a message's click within the attribution window);
the holdout, sent nothing, has none by construction: see the holdout comparison.</p>{currencies}{warnings}
<h2>Winner</h2><p class=muted>Variations other than the holdout, on click-attributed figures.</p>
<p class=verdict>{verdict}</p>
<table><thead><tr><th>Variation</th><th>Probability to be best</th><th>Uplift vs baseline (95% interval)</th></tr></thead>
<tbody>{prob_rows}</tbody></table>
<h2>Holdout comparison</h2>{_holdout_html(body)}
<h2>Per variation</h2>
<p class=muted>Sends, clicks and click-attributed figures: the holdout is sent nothing, so its figures are 0 by
construction and say nothing of its buying; compare it in the holdout comparison above.</p>
{_bars(f"{_metric_label(metric)} per user by variation", per_user, "#5b7bd5", "{:.3f}", labels=names)}
{_bars(f"Send requests per day ({zone})", {k: float(v) for k, v in body['series']['sends_by_day'].items()}, "#48a57a")}
{_bars(f"Attributed revenue per day ({zone})", body['series']['revenue_by_day'], "#d58b3b", "{:,.2f}")}
<h2>Variation performance</h2><p class=muted>Normalized per user allocated to the variation (CTR: clicks / impressions, email).</p>
{_table(body['variations'], [('name', 'Variation')])}
<h2>Channel performance</h2><p class=muted>Only users actually sent on the channel.</p>
{_table(_named(body['channels'], names), [('variation', 'Variation'), ('channel', 'Channel')])}
<h2>Steps</h2>{_table(_named(body['steps'], names), [('variation', 'Variation'), ('step_name', 'Step')])}
</body></html>"""
