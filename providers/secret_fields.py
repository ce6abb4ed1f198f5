"""Which parts of an integration's configuration are secrets, and how they are kept apart.

Rule (one place, every kind): a key named in `SECRET_KEYS` anywhere in the configuration, and
the `value` of any `{"key", "value", "secret": true}` header entry, is a secret. `split` moves
secrets out (stored encrypted in `Integration.secrets_enc`, keyed by their dotted path) and
leaves `MASK` in the public configuration, which is what the API returns. `merge` puts them back
for the adapter. On update, a value sent back as `MASK` keeps the stored secret of the same
field: a named secret by its path (`auth.password`, `api_key`), a secret header by its name
(case-insensitive, as HTTP's), wherever the header now sits in its list, since positions move
when headers are reordered, added or removed.
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


def _child(node: Any, part: str) -> Any:
    """One step of a dotted path: a list index or a mapping key."""
    return node[int(part)] if isinstance(node, list) else node[part]


def _set(root: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = root
    for part in parents:
        node = _child(node, part)
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


def _get(root: Any, path: str) -> Any:
    """The node at a dotted path, or None when the shape has no such node."""
    node = root
    for part in path.split("."):
        try:
            node = _child(node, part)
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return node


def _header_at(public: dict[str, Any], path: str) -> tuple[str, str] | None:
    """(path of its list, lower-cased name) when `path` is the value of a secret header entry."""
    if not path.endswith(".value"):
        return None
    entry_path = path.removesuffix(".value")
    entry = _get(public, entry_path)
    if not isinstance(entry, dict) or entry.get("secret") is not True or not isinstance(entry.get("key"), str):
        return None
    list_path = entry_path.rpartition(".")[0]
    return list_path, entry["key"].lower()


def keep_masked(
    new_secrets: dict[str, Any],
    old_secrets: dict[str, Any],
    *,
    public: dict[str, Any],
    old_public: dict[str, Any],
) -> tuple[dict[str, Any], list[str]]:
    """Replace MASK placeholders by the stored values; returns (secrets, paths with no stored value).

    `public` is the configuration `new_secrets` came from and `old_public` the stored one: a
    masked header value takes the stored secret of the header with the same name, any other
    secret the stored value at its path."""
    old_headers: dict[tuple[str, str], Any] = {}
    for path, value in old_secrets.items():
        header = _header_at(old_public, path)
        if header is not None:
            old_headers[header] = value  # a repeated name: the last wins, as when it is sent
    result: dict[str, Any] = {}
    missing: list[str] = []
    for path, value in new_secrets.items():
        if value != MASK:
            result[path] = value
            continue
        header = _header_at(public, path)
        if header is not None:
            # Never by position: the stored value at this index may belong to another header.
            found, stored = header in old_headers, old_headers.get(header)
        else:
            found, stored = path in old_secrets, old_secrets.get(path)
        if found:
            result[path] = stored
        else:
            missing.append(path)
    return result, missing


def masks_in(config: Any, path: str = "") -> list[str]:
    """Dotted paths whose value is still MASK (after `keep_masked` and `merge`: not secret fields)."""
    if isinstance(config, dict):
        return [p for k, v in config.items() for p in masks_in(v, f"{path}.{k}" if path else str(k))]
    if isinstance(config, list):
        return [p for i, v in enumerate(config) for p in masks_in(v, f"{path}.{i}" if path else str(i))]
    return [path] if config == MASK else []


def _leaves(value: Any) -> list[str]:
    """The text of a secret value: itself, or the secret fields inside a secret object (a service
    account file's `private_key`, not its `client_email` or `token_uri`)."""
    if isinstance(value, dict):
        inner: dict[str, Any] = {}
        _walk(value, "", inner)
        return [leaf for v in inner.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def secret_strings(config: dict[str, Any]) -> list[str]:
    """Every secret value of a full configuration (secrets merged in), as text: what must never be
    kept or shown, whatever a vendor's answer repeats (`providers/base.py::Redactor`)."""
    _, secrets = split(config)
    return [leaf for value in secrets.values() for leaf in _leaves(value) if leaf != MASK]


def plain_strings(config: dict[str, Any]) -> list[str]:
    """The non-secret text values of a configuration (user names, account ids, client ids: what a
    Basic credential pairs with a secret)."""
    public, _ = split(config)
    return [s for s in _texts(public) if s != MASK]


def _texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _texts(v)]
    if isinstance(node, list):
        return [s for v in node for s in _texts(v)]
    return [node] if isinstance(node, str) else []
