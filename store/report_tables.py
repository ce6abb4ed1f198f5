"""Report pre-aggregation tables (docs/reports.md, "Performance"): cohorts, counters, attributions.

A report covers the users whose first trigger falls in its range (cohort semantics), so every
fact is counted under the hour of its user's first trigger: a report over whole hours reads a
few counter rows instead of scanning sends and hits. All three tables are derived data: the
raw tables stay the source of truth and `store.report_rollup.rebuild` recreates them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from store.tables import Journey, Send, UTCDateTime
from store.tracking_tables import TrackingHit


class ReportCohort(SQLModel, table=True):
    """A user's first (non-test) trigger of a campaign: the cohort the user's facts count in."""

    __tablename__ = "report_cohort"
    __table_args__ = (
        Index("ix_report_cohort_first", "campaign_id", "first_at"),
        Index("ix_report_cohort_user", "user_id"),  # a buyer's campaigns, at purchase time
    )

    campaign_id: str = Field(primary_key=True, max_length=40)
    user_id: str = Field(primary_key=True, max_length=40)
    first_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    cohort_hour: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))  # first_at truncated, UTC
    variation_id: str = Field(max_length=64)


class ReportRollup(SQLModel, table=True):
    """One counter: `metric` of the cohort hour's users, per variation/channel/step/UTC day.

    Metrics: users (allocated), sends (send requests, by day), failed (sends failed for good),
    opt_outs (of those, recipients the provider reported gone) and maybe_delivered (of those, sends
    an attempt of which may have been delivered: flagged `possible_duplicate`), impression, click,
    and the unique-user counts channel_users, step_users, click_users; sends_hour: send requests
    by UTC hour (`day` holds 'YYYYMMDDHH', no variation/channel/step), for day series in another
    time zone. Unused dimensions are '' / -1.
    """

    __tablename__ = "report_rollup"

    campaign_id: str = Field(primary_key=True, max_length=40)
    cohort_hour: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    variation_id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(primary_key=True, max_length=16)
    step_index: int = Field(primary_key=True)
    day: str = Field(primary_key=True, max_length=10)
    metric: str = Field(primary_key=True, max_length=16)
    n: int = Field(sa_column=Column(BigInteger(), nullable=False))


class ReportAttribution(SQLModel, table=True):
    """A purchase/add-to-cart of a cohort user with the campaign's last human click before it.

    The attribution window is applied when reading (so a changed window applies to old data),
    and so is the transaction-id dedupe (domain.reports.attribute), exactly as the raw path does.
    """

    __tablename__ = "report_attribution"
    __table_args__ = (Index("ix_report_attr_cohort", "campaign_id", "cohort_hour"),)

    campaign_id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(primary_key=True, max_length=40)
    user_id: str = Field(max_length=40)
    cohort_hour: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    kind: str = Field(max_length=32)
    value: float = 0.0
    transaction_id: str | None = Field(default=None, max_length=64)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    click_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    lag_us: int = Field(sa_column=Column(BigInteger(), nullable=False))  # at - click_at, exact, for the window
    variation_id: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    step_index: int
    # The purchase's `currency` as sent (upper case; None: none given). Revenue adds up the values
    # the section's report currency lets in, read when reporting (ReportSettings, docs/reports.md
    # "Revenue and currencies"). Rows stored before this column are filled once at start-up
    # (store/report_rollup.py, `migrate_reports`).
    currency: str | None = Field(default=None, max_length=8)


class ReportConversion(SQLModel, table=True):
    """A purchase by a cohort user after their first enrollment: an "enrolled-user conversion".

    Every arm, the holdout included, is measured by this one rule (docs/reports.md, "Holdout
    comparison"): the buyer's purchase counts for the arm of their first enrollment in the
    campaign, whether or not any message was sent or clicked. Click attribution
    (`ReportAttribution`) cannot measure a holdout, which receives nothing to click. Stored when
    the purchase is ingested (0 < lag <= the longest attribution window a campaign may have);
    the campaign's window is applied when reading, as for attributions. A repeat of a
    transaction is never stored (its first event decided), so no order id is kept here.
    """

    __tablename__ = "report_conversion"
    __table_args__ = (Index("ix_report_conv_cohort", "campaign_id", "cohort_hour"),)

    campaign_id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(primary_key=True, max_length=40)
    user_id: str = Field(max_length=40)
    cohort_hour: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    variation_id: str = Field(max_length=64)  # the arm of the user's first enrollment (their cohort's)
    value: float = 0.0
    currency: str | None = Field(default=None, max_length=8)  # as ReportAttribution.currency
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    lag_us: int = Field(sa_column=Column(BigInteger(), nullable=False))  # at - first enrollment, for the window


class ReportSettings(SQLModel, table=True):
    """A section's report settings (no row: none set); PATCH /section `currency`.

    A table of its own rather than a column on `section`, as SectionLinks is: `section` stays
    the tenant's identity, and report settings live with the report data.
    """

    __tablename__ = "report_settings"

    section_id: str = Field(primary_key=True, foreign_key="section.id", max_length=40)
    # ISO 4217 code revenue is reported in; None: every purchase's value adds up, whatever its currency.
    currency: str | None = Field(default=None, max_length=3)


# Raw-table indexes the reports need: a cohort's sends and hits by user (edge hours of a
# report, first-fact checks, last click before a purchase).
Index("ix_send_campaign_user", Send.campaign_id, Send.user_id)
Index("ix_hit_campaign_user", TrackingHit.campaign_id, TrackingHit.user_id, TrackingHit.at)  # type: ignore[arg-type]
# A campaign's test journeys (few; partial, so tiny): the campaign list leaves their sends out.
_TEST_JOURNEY = Journey.is_test == True  # noqa: E712  (the same form as the query, so planners match it)
Index("ix_journey_campaign_test", Journey.campaign_id, postgresql_where=_TEST_JOURNEY, sqlite_where=_TEST_JOURNEY)
