"""PII in logs: e-mail addresses and phone numbers are masked in every log record.

Installed once per process as a log-record factory, so it covers every logger (ours, uvicorn,
httpx, temporalio) and every handler, including ones added later. The message is formatted
first (`msg % args`), then masked: `jane.doe@example.com` -> `j***@example.com`,
`+33612345678` -> `+33******678` (runs of 8-15 digits, dates and IPv4 addresses excepted, and
a bare JSON number under a `timestamp` key: APNs's epoch milliseconds). Their percent-encoded
forms in URLs (an access log's path and query) are masked too: `jane%40example.com` ->
`j***%40example.com`, `%2B15551230000` -> `%2B15******000`.
The request loggers of the HTTP clients, whose lines carry push tokens and Web Push endpoints in
URLs, are kept to WARNING (`quiet_request_loggers`).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

# "@" or its percent-encoded form (`jane%40example.com` in a URL's path or query).
EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*(@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# Not after a `%`: the hex digits of an escape are not part of a number (`%2015551230000` is an
# encoded space and then the number, which ENCODED_PHONE masks). Not after `/` either (ids in a
# path, `/orders/12345678`), unless it starts with `+`: `/users/+15551230000` is a phone number.
PHONE = re.compile(r"(?:(?<=/)\+|(?<![\w/:.%-])\+?)\(?\d[\d \-().]{6,}\d(?![\w-])")
# A phone number percent-encoded in a URL (an access log's path or query): `%2B15551230000`, or
# digits separated by encoded spaces, dashes, dots or parentheses (`%2B1%20555%20123%200000`; a
# `+` is a space in a query). It starts at an encoded `+`, after another escape (`phone%3D1555…`),
# or where a plain number could start; matches holding no escape are left to PHONE.
_ESCAPE = r"%[0-9A-Fa-f]{2}"
_ENCODED_SEPARATOR = r"(?:%20|%2[Dd]|%2[Ee]|%28|%29|[-.()+])"
ENCODED_PHONE = re.compile(
    rf"(?:%2[Bb]|(?<![\w/:.%-])|(?<={_ESCAPE}))(?:%28)?\d(?:\d|{_ENCODED_SEPARATOR}){{6,}}\d(?![\w-])"
)
_ESCAPE_BEFORE = re.compile(_ESCAPE)
_UNIT = re.compile(rf"{_ESCAPE}|.", re.DOTALL)  # one character of encoded text: an escape or a character
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# The text before a bare JSON number under a key naming a timestamp (`"timestamp": `): APNs's 410
# answer `{"reason":"Unregistered","timestamp":1790000000456}` carries epoch milliseconds, 13
# digits that read like a phone number. A phone number is a string in JSON, so this spares no PII.
TIMESTAMP_KEY = re.compile(r'"[\w-]*timestamp"\s*:\s*$', re.IGNORECASE)
_KEY_LOOKBACK = 64  # characters before a match searched for its key
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")

# Loggers that write every outbound request's URL at INFO (httpx: `HTTP Request: POST <url>
# "HTTP/1.1 410 Gone"`; httpcore and aiohttp's access log likewise, at their levels). An APNs/FCM
# token or a Web Push endpoint sits in that URL and is a bearer capability (whoever has it can
# push to the device), in no shape the masking below recognises: keep them to WARNING and up.
REQUEST_LOGGERS = ("httpx", "httpcore", "aiohttp.access", "aiohttp.client")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_installed = False
_FORMATTER = logging.Formatter()


def mask(text: str) -> str:
    text = EMAIL.sub(lambda m: f"{m.group(1)}***{m.group(2)}{m.group(3)}", text)
    if "%" in text:
        text = ENCODED_PHONE.sub(_mask_encoded_phone, text)
    return PHONE.sub(_mask_phone, text)


def _mask_phone(m: re.Match[str]) -> str:
    """Phone-like runs of 8-15 digits keep their first 3 and last 3 characters; dates and IPv4
    addresses (a refused URL's address, a client's) are left alone."""
    found = m.group(0)
    digits = sum(c.isdigit() for c in found)
    if not 8 <= digits <= 15 or DATE.match(found) or IPV4.fullmatch(found.lstrip("(")) or _json_timestamp(m):
        return found
    return found[:3] + "******" + found[-3:]


def _mask_encoded_phone(m: re.Match[str]) -> str:
    """`_mask_phone` for a percent-encoded number: the same rule on the decoded text, keeping its
    first 3 and last 3 characters as they were written (`%2B15551230000` -> `%2B15******000`)."""
    found = m.group(0)
    if "%" not in found and not _ESCAPE_BEFORE.fullmatch(m.string, max(0, m.start() - 3), m.start()):
        return found  # plain text: PHONE's rules (and its exceptions) decide
    units = _UNIT.findall(found)
    decoded = unquote("".join(units))
    digits = sum(c.isdigit() for c in decoded)
    if not 8 <= digits <= 15 or DATE.match(decoded) or IPV4.fullmatch(decoded.lstrip("(")):
        return found
    return "".join(units[:3]) + "******" + "".join(units[-3:])


def _json_timestamp(m: re.Match[str]) -> bool:
    """Whether the match is a bare JSON number that is a `...timestamp` key's value."""
    key = TIMESTAMP_KEY.search(m.string, max(0, m.start() - _KEY_LOOKBACK), m.start())
    return key is not None and m.group(0).isdigit()


def configure_logging(level: int = logging.INFO) -> None:
    """A process's logging: one line per record on stderr, PII masked, request URLs not logged."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    install_log_redaction()


def quiet_request_loggers() -> None:
    """Keep the HTTP clients' per-request lines (URLs holding push tokens) out of the logs."""
    for name in REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def install_log_redaction() -> None:
    """Mask PII in all log records created from now on and quiet the request loggers (idempotent).

    Every process that builds a worker or the API calls it, so the request loggers are quiet
    there even when the embedding program configured logging itself."""
    quiet_request_loggers()
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _mask_in_place(record):
            return _mask_extras(record)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error path
            return record
        masked = mask(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        return _mask_extras(record)

    logging.setLogRecordFactory(factory)
    _installed = True


def _mask_in_place(record: logging.LogRecord) -> bool:
    """Mask a record whose arguments are all plain values without formatting it: formatters that
    read `record.args` themselves (uvicorn's access log takes client, method, path, version and
    status from it) keep working. False when the record needs the format-then-mask path."""
    if not isinstance(record.msg, str) or not isinstance(record.args, tuple) or not record.args:
        return False
    if not all(_plain(a) for a in record.args):
        return False  # objects may render PII only when formatted
    record.msg = mask(record.msg)
    record.args = tuple(mask(a) if isinstance(a, str) else a for a in record.args)
    return True


def _plain(value: object) -> bool:
    """A value that shows no PII unless it is a string (masked): short numbers (a status code, a
    count; 8+ digits could be a phone number, left to the format-then-mask path), None."""
    if value is None or isinstance(value, (str, float)) and not isinstance(value, bool):
        return True
    return isinstance(value, int) and abs(value) < 10_000_000


def _mask_extras(record: logging.LogRecord) -> logging.LogRecord:
    if record.exc_info and not record.exc_text:
        # Handlers print exc_text when set: pre-render the traceback masked (errors echo payloads).
        record.exc_text = mask(_FORMATTER.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = mask(record.stack_info)
    return record
