"""The object store: boto3 clients for S3 (subscriber lists, feeds) and the uploads store.

One factory so the API (provisioning) and the activities (streaming files) talk to the same
endpoint with the same credentials. Clients are cheap to make and not shared across threads.

Uploaded feed files go through `uploads(settings)`: S3 when one is configured, else a folder
under the data dir (`bin/dev` runs no object store). The local store serves one host only: the
API writes the file and a worker reads it, so several hosts need S3.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from settings import Settings

CHUNK = 1 << 16
# The upload time in a key, to the microsecond: keys of one feed sort oldest first, also two uploads
# of one second (keys of seconds only, before, sort before the next ones of their second: "-" < digit).
UPLOAD_TIME = "%Y%m%dT%H%M%S%f"
DELETE_BATCH = 1000  # keys per S3 DeleteObjects call (its limit)


class ObjectStoreUnavailable(Exception):
    """The configured object store cannot be used (unreachable, refused credentials, none set up)."""


class ObjectMissing(Exception):
    """The object is not in the store."""


class Uploads(Protocol):
    """Where uploaded files are kept until a sync reads them."""

    def put(self, key: str, body: IO[bytes]) -> None: ...

    def chunks(self, key: str, offset: int, chunk: int = CHUNK) -> AbstractContextManager[Iterator[bytes]]: ...

    def keys(self, prefix: str) -> list[str]:
        """Every complete object under `prefix` (a folder ending with "/"), in key order."""
        ...

    def delete(self, keys: list[str]) -> dict[str, str]:
        """Delete `keys` (one already gone counts as deleted); returns the keys not deleted, with why."""
        ...


def upload_prefix(section_id: str, feed_id: str) -> str:
    return f"feeds/{section_id}/{feed_id}/"


def upload_key(section_id: str, feed_id: str, at: datetime) -> str:
    """A key of its own for each upload, never rewritten: `feeds/<section>/<feed>/<time>-<random>.csv`."""
    return f"{upload_prefix(section_id, feed_id)}{at.strftime(UPLOAD_TIME)}-{secrets.token_hex(3)}.csv"


def uploads(settings: Settings) -> Uploads:
    if settings.uses_s3:
        return S3Uploads(settings)
    return LocalUploads(settings.data_dir / "objects" / settings.subscriber_bucket)


def describe(settings: Settings) -> str:
    return f"S3 at {settings.s3_endpoint_url}" if settings.s3_endpoint_url else "AWS S3"


@contextmanager
def reachable(settings: Settings) -> Iterator[None]:
    """Turn boto3's failures to reach or sign in to S3 into one error naming the store and the cause."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ObjectStoreUnavailable(f"the object store ({describe(settings)}) refused the request: {code}") from exc
    except BotoCoreError as exc:
        # NoCredentialsError, EndpointConnectionError, timeouts: configuration or network, not the request.
        raise ObjectStoreUnavailable(f"the object store ({describe(settings)}) is unavailable: {exc}") from exc


class S3Uploads:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.subscriber_bucket

    def put(self, key: str, body: IO[bytes]) -> None:
        with reachable(self.settings):
            s3 = client(self.settings)
            ensure_bucket(s3, self.bucket)
            s3.upload_fileobj(body, self.bucket, key)

    @contextmanager
    def chunks(self, key: str, offset: int, chunk: int = CHUNK) -> Iterator[Iterator[bytes]]:
        extra: dict[str, Any] = {"Range": f"bytes={offset}-"} if offset else {}
        body = client(self.settings).get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        try:
            yield body.iter_chunks(chunk)
        finally:
            body.close()

    def keys(self, prefix: str) -> list[str]:
        with reachable(self.settings):
            pages = client(self.settings).get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return sorted(str(o["Key"]) for page in pages for o in page.get("Contents", []))

    def delete(self, keys: list[str]) -> dict[str, str]:
        failed: dict[str, str] = {}
        s3 = client(self.settings)
        for at in range(0, len(keys), DELETE_BATCH):
            batch = keys[at : at + DELETE_BATCH]
            try:
                with reachable(self.settings):
                    answer = s3.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                    )
            except ObjectStoreUnavailable as exc:
                failed.update(dict.fromkeys(batch, str(exc)))
                continue
            for err in answer.get("Errors", []):
                failed[str(err.get("Key"))] = f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
        return failed


class LocalUploads:
    """Files under a directory, keyed like S3 objects (`feeds/<section>/<feed>/<name>.csv`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        root = self.root.resolve()
        path = (root / key).resolve()
        # Keys are made by Rejoin, but a key must never name a file outside the store.
        if not key or not path.is_relative_to(root) or path == root:
            raise ValueError(f"invalid object key {key!r}")
        return path

    def put(self, key: str, body: IO[bytes]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            with tmp.open("wb") as out:
                shutil.copyfileobj(body, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            # Renamed when complete: a sync never reads a half-written file.
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def chunks(self, key: str, offset: int, chunk: int = CHUNK) -> Iterator[Iterator[bytes]]:
        try:
            f = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(
                f"{key} is not in the local object store {self.root}; with API and workers on several hosts, "
                "configure S3 (REJOIN_S3_ENDPOINT_URL)"
            ) from exc
        with f:
            f.seek(offset)
            yield iter(lambda: f.read(chunk), b"")

    def keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        # Dot files are uploads still being written (`put` renames them when complete).
        return sorted(prefix + p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def delete(self, keys: list[str]) -> dict[str, str]:
        failed: dict[str, str] = {}
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except (OSError, ValueError) as exc:
                failed[key] = str(exc)
        return failed


def client(settings: Settings, service: str = "s3") -> Any:
    kwargs: dict[str, Any] = {
        "region_name": settings.s3_region,
        # A short connect timeout: an unreachable store answers the API caller in seconds, not minutes.
        "config": Config(
            retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}, connect_timeout=10
        ),
    }
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id:
        kwargs["aws_access_key_id"] = settings.s3_access_key_id
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key
    return boto3.client(service, **kwargs)


def ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def upload_policy(bucket: str, prefix: str) -> str:
    """IAM policy for one integration's uploader: list its prefix, read/write objects under it."""
    import json

    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket"],
                    "Resource": f"arn:aws:s3:::{bucket}",
                    "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
                },
                {
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
                    "Resource": f"arn:aws:s3:::{bucket}/{prefix}*",
                },
            ],
        }
    )


def issue_access_key(
    iam: Any, user_name: str, bucket: str, prefix: str, previous_key_id: str | None
) -> tuple[str, str]:
    """Create (or rotate) the uploader's access key; the old key stops working at once."""
    try:
        iam.get_user(UserName=user_name)
    except iam.exceptions.NoSuchEntityException:
        iam.create_user(UserName=user_name)
    iam.put_user_policy(
        UserName=user_name, PolicyName="rejoin-upload", PolicyDocument=upload_policy(bucket, prefix)
    )
    if previous_key_id:
        try:
            iam.delete_access_key(UserName=user_name, AccessKeyId=previous_key_id)
        except iam.exceptions.NoSuchEntityException:
            pass
    key = iam.create_access_key(UserName=user_name)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])
