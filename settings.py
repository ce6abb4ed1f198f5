"""Rejoin's configuration: one pydantic-settings class read from the environment.

Used by `api/`, `worker.py` and the launcher; never by `workflows/` (workflows read no
environment). Every value has a default that makes the embedded single-machine setup work;
pointing `TEMPORAL_ADDRESS` at a cluster and `REJOIN_DATABASE_URL` at PostgreSQL scales out.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.tracking import safe_target


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,62}")  # S3's names (3-63 characters), plus "_" some stores allow
_AWS_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


class Settings(BaseSettings):
    """Environment-driven settings (prefix `REJOIN_`, Temporal's own `TEMPORAL_*` names too)."""

    model_config = SettingsConfigDict(env_prefix="REJOIN_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = ""  # default: SQLite file under data_dir

    temporal_address: str = Field(
        "localhost:7233", validation_alias=AliasChoices("TEMPORAL_ADDRESS", "REJOIN_TEMPORAL_ADDRESS")
    )
    temporal_namespace: str = Field(
        "default", validation_alias=AliasChoices("TEMPORAL_NAMESPACE", "REJOIN_TEMPORAL_NAMESPACE")
    )
    temporal_ui_url: str = "http://localhost:8233"
    task_queue: str = "rejoin-journeys"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_url: str = ""  # how recipients reach tracking links; default http://{api_host}:{api_port}
    # Tracking links (clicks, pixels, SMS short links, push tokens) die this long after the send;
    # dead links go to the section's fallback URL, else this one, else a neutral page.
    link_ttl: timedelta = timedelta(days=90)
    link_fallback_url: str = ""

    # Secret key for encrypting provider credentials and identifiers at rest. Several keys may be
    # given comma-separated: the first encrypts, all decrypt (rotation). Empty: a key file in data_dir.
    secret_key: str = ""
    # Bootstrap key for the admin routes (creating sections). Empty: a key file in data_dir.
    admin_key: str = ""

    global_cap_messages: int = 5
    global_cap_window: timedelta = timedelta(hours=24)
    priority_window: timedelta = timedelta(hours=24)

    # Outbound HTTP to providers: private/loopback targets are refused unless allowed (dev/tests).
    allow_private_urls: bool = False
    # Exact internal `host:port` targets allowed anyway (comma-separated), e.g. an in-VPC relay.
    private_url_allowlist: str = ""
    delivery_timeout: timedelta = timedelta(seconds=30)
    # Recipients of one batched-campaign batch (a shard's `deliver_batch`) delivered at once.
    broadcast_concurrency: int = Field(64, ge=1)
    # Shards of a NEW batched-campaign run: each is one `deliver_batch` activity at a time, on
    # whichever worker takes it, so a run uses at most this many worker processes (~100
    # recipients/s each). Read where runs, schedules and feed syncs are created (the API); a
    # run keeps the count it was created with, a Temporal Schedule the one it was last written with.
    broadcast_shards: int = Field(2, ge=1, le=64)
    # Run workflows in Temporal's import sandbox. Off by default: the sandbox re-imports (and,
    # without .pyc files, recompiles) the workflow module for every new journey, which measured
    # as ~25% of the worker's CPU per journey (docs/performance.md). Determinism is still held
    # by the code rules, the replay suite and the test suite, which runs with the sandbox on.
    workflow_sandbox: bool = False

    # Subscriber lists on S3 (or any S3-compatible endpoint). Empty endpoint: AWS itself; empty
    # keys: boto3's default credential chain. With `subscriber_credentials` "iam", Rejoin's own keys
    # must be allowed to create IAM users/keys, because "Sync now" hands each integration its own.
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    subscriber_bucket: str = "rejoin-subscribers"
    # Buckets an `s3` feed may read (comma-separated), with Rejoin's own S3 credentials; and in them only
    # keys under the feed's section's own folder (`<section_id>/...`: `domain/feed_source.py`). Empty:
    # s3 feeds are refused (a section could otherwise name any object those credentials can read). Never
    # `subscriber_bucket`, which holds every section's uploads and subscriber lists.
    feed_s3_buckets: str = ""
    # Who gives customers their upload credentials: "iam" (Rejoin, through the AWS IAM API: an IAM
    # user limited to the list's prefix and an access key shown once by "Sync now") or "operator"
    # (Rejoin never calls IAM; the operator issues them, e.g. MinIO users, which have no IAM API).
    subscriber_credentials: Literal["iam", "operator"] = "iam"
    # Where uploaded feed files are kept: "s3", "local" (data_dir/objects, one host only: the
    # API and the workers must share that folder) or "auto" (S3 when an endpoint or access key
    # is set, or AWS credentials are in the environment; else local, so `bin/dev` needs no object
    # store). An EC2 instance role: set "s3". Subscriber lists and S3 feeds always need S3.
    object_store: Literal["auto", "s3", "local"] = "auto"
    subscriber_sync_every: timedelta = timedelta(minutes=5)
    # A file with more bad rows than this is not applied at all (the previous list stays).
    subscriber_max_rejected_rows: int = 100_000
    # A full product feed file that would remove more than this share of the feed's products
    # (a truncated upload) is refused unless the sync is forced (`?force=true`).
    feed_max_removal_share: float = Field(0.5, ge=0, le=1)
    # A subscriber-list file listing fewer subscribers than the active list by more than this share
    # of it (a header-only or truncated file) is refused unless forced (`.../subscribers/sync?force=true`).
    list_max_removal_share: float = Field(0.5, ge=0, le=1)
    # Big list files (PostgreSQL) are parsed, hashed and sealed by this many helper processes
    # (~45 MB each; 0 = in the worker process); smaller files stay in-process.
    subscriber_sync_processes: int = 2
    subscriber_sync_pool_min_bytes: int = 8 * 1024 * 1024

    # Request limits (api/limits.py): body size, JSON nesting, per-key token bucket (0 = off).
    max_body_bytes: int = 1024 * 1024
    # Uploads streamed to the object store (`PUT /feeds/{id}/file`) are never held whole, so they
    # get a limit of their own (api/limits.py: STREAMED_UPLOADS); every other body keeps max_body_bytes.
    max_upload_bytes: int = Field(1024 * 1024 * 1024, ge=1)
    max_json_depth: int = 32
    rate_limit_per_second: float = 1000.0
    rate_limit_burst: int = 2000
    # Tracking links and pixels are answered for everyone, always (a customer never gets a
    # 429), but hits are recorded at most this fast per client address: a flood from one
    # address (a scanner, a bot, an attack on the database) is redirected and not stored.
    tracking_hits_per_second: float = 5.0
    tracking_hits_burst: int = 50
    # Raw events older than this are deleted hourly by each API process and by `rejoin purge-events`.
    event_retention: timedelta = timedelta(days=395)

    @field_validator("global_cap_messages")
    @classmethod
    def _positive_cap(cls, v: int) -> int:
        if v < 1:
            raise ValueError("global cap must be at least 1 message")
        return v

    @field_validator("link_ttl")
    @classmethod
    def _positive_ttl(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("link lifetime must be positive")
        return v

    @field_validator("subscriber_credentials", mode="before")
    @classmethod
    def _credentials_issuer(cls, v: object) -> object:
        if v not in ("iam", "operator"):
            raise ValueError(
                f"REJOIN_SUBSCRIBER_CREDENTIALS must be iam (Rejoin issues subscriber-list upload keys through "
                f"the AWS IAM API) or operator (the operator issues them; Rejoin never calls IAM), not {v!r}"
            )
        return v

    @field_validator("feed_s3_buckets")
    @classmethod
    def _feed_buckets(cls, v: str, info: ValidationInfo) -> str:
        own = info.data.get("subscriber_bucket")
        for bucket in (b.strip() for b in v.split(",")):
            if bucket and not _BUCKET.fullmatch(bucket):
                raise ValueError(f"{bucket!r} is not an S3 bucket name (comma-separated names, no paths or wildcards)")
            if bucket and bucket == own:
                raise ValueError(
                    f"{bucket!r} is Rejoin's own bucket (REJOIN_SUBSCRIBER_BUCKET: every section's uploads and "
                    "subscriber lists); s3 feeds may not read it"
                )
        return v

    @field_validator("link_fallback_url")
    @classmethod
    def _fallback_url(cls, v: str) -> str:
        if v and not safe_target(v):
            raise ValueError("link fallback URL must be an absolute http(s) URL without credentials")
        return v

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # owner only: the database holds PII
        return f"sqlite:///{(self.data_dir / 'rejoin.db').resolve()}"

    @cached_property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def uses_s3(self) -> bool:
        """Whether an S3 store is configured (else uploads stay in data_dir, subscriber lists are off)."""
        if self.object_store != "auto":
            return self.object_store == "s3"
        # AWS's own credential settings (keys, a profile, a role for web identity or a container)
        # also say S3 is meant; an EC2 instance role sets none of them: "s3" must be said.
        aws = any(os.environ.get(v) for v in _AWS_CREDENTIALS)
        return bool(self.s3_endpoint_url or self.s3_access_key_id or aws)

    @property
    def feed_buckets(self) -> list[str]:
        """The buckets `s3` feeds may read (`feed_s3_buckets`); empty: s3 feeds are off."""
        return [b.strip() for b in self.feed_s3_buckets.split(",") if b.strip()]

    @property
    def allowed_private_targets(self) -> list[str]:
        return [t.strip() for t in self.private_url_allowlist.split(",") if t.strip()]

    @cached_property
    def secret_keys(self) -> list[str]:
        """Encryption keys, newest first. Generated once into data_dir when none is configured."""
        raw = self.secret_key or _key_file(self.data_dir / "secret.key", _new_fernet_key)
        return [k.strip() for k in raw.split(",") if k.strip()]

    @cached_property
    def effective_admin_key(self) -> str:
        return self.admin_key or _key_file(self.data_dir / "admin.key", lambda: "rjadmin_" + secrets.token_urlsafe(24))

    def temporal_ui_link(self, workflow_id: str) -> str:
        from urllib.parse import quote

        return f"{self.temporal_ui_url.rstrip('/')}/namespaces/{self.temporal_namespace}/workflows/{quote(workflow_id, safe='')}"


def _new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _key_file(path: Path, make: object) -> str:
    """Read a generated secret from `path`, creating it (mode 600) on first use.

    Processes starting together on a fresh data folder (the API and a worker) must end up with
    the same key, or what one encrypts the other cannot read: the key is written to a file of
    this process's own and linked into place, which fails if another process got there first;
    the loser then reads the winner's key. No reader ever sees a half-written file."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the data folder: keys, databases (PII)
    value = str(make())  # type: ignore[operator]
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value)
        try:
            os.link(draft, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        draft.unlink(missing_ok=True)
    return value
