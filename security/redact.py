"""PII in logs: e-mail addresses and phone numbers are masked in every log record.

Installed once per process as a log-record factory, so it covers every logger (ours, uvicorn,
httpx, temporalio) and every handler, including ones added later. The message is formatted
first (`msg % args`), then masked: `jane.doe@example.com` -> `j***@example.com`,
`+33612345678` -> `+33******678` (runs of 8-15 digits, dates excepted).
"""

from __future__ import annotations

import logging
import re
from typing import Any

EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
PHONE = re.compile(r"(?<![\w/:.-])\+?\(?\d[\d \-().]{6,}\d(?![\w-])")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

_installed = False
_FORMATTER = logging.Formatter()


def mask(text: str) -> str:
    text = EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return PHONE.sub(_mask_phone, text)


def _mask_phone(m: re.Match[str]) -> str:
    """Phone-like runs of 8-15 digits keep their first 3 and last 3 characters; dates are left alone."""
    found = m.group(0)
    digits = sum(c.isdigit() for c in found)
    if not 8 <= digits <= 15 or DATE.match(found):
        return found
    return found[:3] + "******" + found[-3:]


def install_log_redaction() -> None:
    """Mask PII in all log records created from now on (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error path
            return record
        masked = mask(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Handlers print exc_text when set: pre-render the traceback masked (errors echo payloads).
            record.exc_text = mask(_FORMATTER.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
