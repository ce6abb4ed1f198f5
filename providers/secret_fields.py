"""Which parts of an integration's configuration are secrets, and how they are kept apart.

Rule (one place, every kind): a key named in `SECRET_KEYS` anywhere in the configuration, and
the `value` of any `{"key", "value", "secret": true}` header entry, is a secret. `split` moves
secrets out (stored encrypted in `Integration.secrets_enc`, keyed by their dotted path) and
leaves `MASK` in the public configuration, which is what the API returns. `merge` puts them back
for the adapter. On update, a value sent back as `MASK` keeps the stored secret.
"""

from __future__ import annotations

import copy
from typing import Any

MASK = "********"
SECRET_KEYS = frozenset(
    {"password", "client_secret", "api_key", "auth_token", "private_key", "service_account", "vapid_private_key"}
)


def _walk(node: Any, path: str, out: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        is_secret_header = node.get("secret") is True and "value" in node
        result: dict[str, Any] = {}
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if (k in SECRET_KEYS or (is_secret_header and k == "value")) and v not in (None, ""):
                out[p] = v
                result[k] = MASK
            else:
                result[k] = _walk(v, p, out)
        return result
    if isinstance(node, list):
        return [_walk(v, f"{path}.{i}", out) for i, v in enumerate(node)]
    return node


def split(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(public config with masks, {dotted path: secret value})."""
    secrets: dict[str, Any] = {}
    public = _walk(config, "", secrets)
    return public, secrets


def _set(root: Any, path: str, value: Any) -> None:
    parts = path.split(".")
    node = root
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def merge(public: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
    full = copy.deepcopy(public)
    for path, value in secrets.items():
        try:
            _set(full, path, value)
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # the shape changed since: the secret no longer applies
    return full


def keep_masked(new_secrets: dict[str, Any], old_secrets: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Replace MASK placeholders by the stored values; returns (secrets, paths with no stored value)."""
    result: dict[str, Any] = {}
    missing: list[str] = []
    for path, value in new_secrets.items():
        if value == MASK:
            if path in old_secrets:
                result[path] = old_secrets[path]
            else:
                missing.append(path)
        else:
            result[path] = value
    return result, missing
