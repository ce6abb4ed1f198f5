"""Percent-encoded phone numbers and e-mail addresses in URLs (access-log paths and queries) are
masked like plain ones, through the log-record factory every process installs."""

from __future__ import annotations

import logging

import pytest
from uvicorn.logging import AccessFormatter

from security.redact import install_log_redaction, mask

PATH = "/api/v1/users/%2B15551230000/journeys?email=jane.doe%40example.com&phone=%2b33%206%2012%2034%2056%2078"


def test_an_access_log_line_masks_percent_encoded_phones_and_emails(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn's access record (formatted from its args) and a plain record both come out masked."""
    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", PATH, "1.1", 200)
        access = caplog.records[-1]
        logging.getLogger("some.library").info("fetching %s", f"https://api.example{PATH}")
        other = caplog.records[-1]
    line = AccessFormatter(fmt='%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(access)
    want = "/api/v1/users/%2B15******000/journeys?email=j***%40example.com&phone=%2b33******%2078"
    assert line == f'127.0.0.1:5000 - "GET {want} HTTP/1.1" 200 OK', line
    assert other.getMessage() == f"fetching https://api.example{want}", other.getMessage()
    for text in (line, other.getMessage()):
        assert "5551230" not in text and "jane" not in text and "12%2034" not in text, text


def test_encoded_forms_keep_the_plain_exceptions() -> None:
    """Encoded dates, short numbers and escapes' own hex digits are not phone numbers; a number right
    after an escape (an encoded `=` or space) is one."""
    assert mask("/r?from=2026-11-23%2010%3A00&n=%2012") == "/r?from=2026-11-23%2010%3A00&n=%2012"
    assert mask("/x?q=a%202026-11-23%2010") == "/x?q=a%202026-11-23%2010"
    assert mask("phone%3D15551230000") == "phone%3D155******000"
    assert mask("/u?q=%2015551230000") == "/u?q=%20155******000"
    assert mask("/u?phone=1%20555%20123%200000") == "/u?phone=1%205******000"
    assert mask("/u/Jane.Doe%2Bshop%40Example.com") == "/u/J***%40Example.com"
    assert mask("token=abc%2B12345678901xyz") == "token=abc%2B12345678901xyz"  # not a number on its own


def test_a_plain_phone_in_a_path_is_masked_when_it_starts_with_plus() -> None:
    """`/users/+15551230000` is a phone number (a user ref); `/orders/12345678` stays an id."""
    assert mask("GET /api/v1/users/+15551230000/journeys") == "GET /api/v1/users/+15******000/journeys"
    assert mask("GET /api/v1/orders/12345678") == "GET /api/v1/orders/12345678"
    assert mask("see https://shop.example/+33 6 12 34 56 78 now") == "see https://shop.example/+33****** 78 now"
