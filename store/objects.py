"""boto3 clients for the S3-compatible object store (subscriber lists, feeds).

One factory so the API (provisioning) and the activities (streaming files) talk to the same
endpoint with the same credentials. Clients are cheap to make and not shared across threads.
"""

from __future__ import annotations

from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from settings import Settings


def client(settings: Settings, service: str = "s3") -> Any:
    kwargs: dict[str, Any] = {
        "region_name": settings.s3_region,
        "config": Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}),
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
