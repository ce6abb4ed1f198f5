"""Signed tracking tokens, short codes, target allow-list and bot rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.tracking import Signer, bot_reason, safe_target


def test_signed_token_round_trips_and_tampering_is_refused() -> None:
    """A token verifies only unchanged, for its own kind, under a key we hold."""
    signer = Signer(["k1"])
    token = signer.sign("c", {"k": "send", "u": "usr_1", "t": "https://shop.example/"})
    assert signer.verify("c", token) == {"k": "send", "u": "usr_1", "t": "https://shop.example/"}
    body, sig = token.split(".")
    forged = Signer(["attacker"]).sign("c", {"k": "send", "u": "usr_1", "t": "https://evil.example/"})
    assert signer.verify("c", forged) is None
    assert signer.verify("c", forged.split(".")[0] + "." + sig) is None
    assert signer.verify("c", body + "." + sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")) is None
    assert signer.verify("o", token) is None  # a click token is not a pixel token
    assert signer.verify("c", "garbage") is None


def test_rotated_keys_still_verify_old_links() -> None:
    """After rotation (new key first) links signed with the old key still verify."""
    old = Signer(["old"]).sign("c", {"t": "https://a.example/"})
    assert Signer(["new", "old"]).verify("c", old) == {"t": "https://a.example/"}
    assert Signer(["new"]).verify("c", old) is None


def test_short_codes_are_base62_deterministic_and_distinct() -> None:
    """Short codes: >= 8 base62 chars, same for the same (send, target), different otherwise."""
    s = Signer(["k"])
    a = s.short_code("send-1", "https://a.example/")
    assert len(a) >= 8 and a.isalnum() and a == s.short_code("send-1", "https://a.example/")
    assert a != s.short_code("send-2", "https://a.example/") != s.short_code("send-1", "https://b.example/")


def test_only_plain_http_targets_are_allowed() -> None:
    """javascript:, protocol-relative, credentials, backslashes and control chars are refused."""
    assert safe_target("https://shop.example/p?q=1")
    for bad in ["javascript:alert(1)", "//evil.example", "https://user@evil.example/", "https://a\\b",
                "https://a.example/\r\nX: y", "data:text/html,x", "/relative"]:  # fmt: skip
        assert not safe_target(bad), bad


def test_bot_rules() -> None:
    """HEAD requests, scanner agents and hits within 1 s of the send are not human."""
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    later = sent + timedelta(minutes=5)
    human = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"
    assert bot_reason(method="GET", user_agent=human, at=later, sent_at=sent) is None
    assert bot_reason(method="HEAD", user_agent=human, at=later, sent_at=sent) == "head_request"
    assert bot_reason(method="GET", user_agent="Mozilla/5.0 (compatible; Barracuda Sentinel)", at=later, sent_at=sent) == "scanner_user_agent"
    assert bot_reason(method="GET", user_agent=human, at=sent + timedelta(milliseconds=400), sent_at=sent) == "too_fast_after_send"
