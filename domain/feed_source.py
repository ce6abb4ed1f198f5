"""Which S3 objects an `s3` feed may read.

The worker reads an s3 feed with Rejoin's own S3 credentials, which can read far more than any one
section's files: every section's uploaded feed files and subscriber lists (`REJOIN_SUBSCRIBER_BUCKET`)
and whatever else the deployment's keys reach. So a section names a location only within what the
operator opened to feeds: a bucket listed in `REJOIN_FEED_S3_BUCKETS`, never Rejoin's own bucket, and
in it a key under the section's own folder, `<section_id>/`. Checked when the feed is saved (a 422
naming the field) and again by every sync (a feed saved before the rule, or edited in the database,
ends `refused` without S3 being asked anything).
"""

from __future__ import annotations


def s3_feed_refusal(
    allowed: list[str], own_bucket: str, section_id: str, bucket: str, key: str
) -> tuple[str, str] | None:
    """(field, why) when section `section_id` may not read `s3://bucket/key` as a feed, else None.

    `allowed`: the operator's buckets for feeds (`Settings.feed_buckets`); `own_bucket`: Rejoin's
    own (`REJOIN_SUBSCRIBER_BUCKET`), refused even if listed."""
    if not allowed:
        return "source", (
            "s3 feeds are not enabled on this deployment: the operator lists the buckets feeds may read in "
            "REJOIN_FEED_S3_BUCKETS; meanwhile upload the file (source upload, PUT /api/v1/feeds/{id}/file) "
            "or give a URL (source url)"
        )
    if bucket == own_bucket:
        return "s3_bucket", "Rejoin's own bucket is not readable by feeds; upload the file instead"
    if bucket not in allowed:
        # The allowed buckets are not listed: they are the operator's, shared by every section.
        return "s3_bucket", (
            f"the bucket {bucket!r} is not one this deployment lets s3 feeds read (the operator lists those in "
            "REJOIN_FEED_S3_BUCKETS)"
        )
    folder = f"{section_id}/"
    parts = key.removeprefix(folder).split("/")
    # No "." or ".." segments, no empty ones: S3 keys are literal, but a proxy or an S3-compatible
    # store that normalizes paths must never resolve `<section>/../<other section>/...` out of the folder.
    if not key.startswith(folder) or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        example = f"{folder}<path>, e.g. {folder}feed.csv"
        return "s3_key", f"must be a file under this section's own folder in the bucket: {example}"
    return None
