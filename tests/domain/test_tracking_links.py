"""Signed tracking tokens, short codes, target allow-list and bot rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.tracking import (
    Linker,
    Signer,
    bot_reason,
    expired,
    host_allowed,
    issued_at,
    parse_legacy_click,
    safe_target,
)


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


def test_links_carry_section_and_issue_time_and_expire_after_the_lifetime() -> None:
    """Click, pixel and push tokens sign the section and the send time; older than the TTL is dead."""
    sent = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    linker = Linker(Signer(["k"]), "https://t.example", "send-1", "usr_1", section_id="sec_1", issued=sent)
    click = Signer(["k"]).verify("c", linker.click("https://shop.example/").rsplit("/", 1)[1])
    stamp = int(sent.timestamp())
    assert click == {"k": "send-1", "u": "usr_1", "t": "https://shop.example/", "s": "sec_1", "i": stamp}
    pixel = Signer(["k"]).verify("o", linker.pixel_url().rsplit("/", 1)[1].removesuffix(".gif"))
    assert pixel is not None and issued_at(pixel) == sent and pixel["s"] == "sec_1"
    push = Signer(["k"]).verify("p", linker.push_token())
    assert push is not None and issued_at(push) == sent
    ttl = timedelta(days=90)
    assert not expired(sent, sent + timedelta(days=89, hours=23), ttl)
    assert expired(sent, sent + timedelta(days=90, seconds=1), ttl)
    assert not expired(None, sent + timedelta(days=900), ttl)  # unknown: the caller asks the send
    assert issued_at({"i": "123"}) is None and issued_at({"i": True}) is None and issued_at({}) is None


def test_unverified_reads_a_forged_token_only_for_its_claims() -> None:
    """`unverified` decodes any token body (to pick a fallback page); `verify` still refuses it."""
    forged = Signer(["attacker"]).sign("c", {"s": "sec_x", "t": "https://evil.example/"})
    assert Signer.unverified(forged) == {"s": "sec_x", "t": "https://evil.example/"}
    assert Signer(["k"]).verify("c", forged) is None
    assert Signer.unverified("%%%.x") is None and Signer.unverified("") is None


def test_legacy_click_parameters_and_target() -> None:
    """Reconnect's tremclk shape: targetUrl is last; encoded targets decode once, plain ones keep their query."""
    encoded = ("cuid=John.doe%40mail.com&cuidType=ihe&sec=8781202&expId=0&expVer=0&expVisitId=&mech=0&smech=&va="
               "&pExpId=0&pExpVer=0&pExpVisitId=&pMech=0&pSmech=&pVa="
               "&targetUrl=https%3A%2F%2Fwww.mywebsite.com%2Fcart%3Fa%3D1%26b%3D2")  # fmt: skip
    c = parse_legacy_click(encoded)
    assert (c.section, c.campaign, c.cuid, c.cuid_type) == ("8781202", "0", "John.doe@mail.com", "ihe")
    assert c.target == "https://www.mywebsite.com/cart?a=1&b=2"
    plain = parse_legacy_click("cuid=x&sec=1&expId=cmp_1&targetUrl=http://lifestylelabels.com/p.html?x=1&sec=evil")
    assert plain.target == "http://lifestylelabels.com/p.html?x=1&sec=evil" and plain.section == "1"
    assert parse_legacy_click("cuid=a&sec=1").target == ""
    assert parse_legacy_click("TARGETURL=https%3A%2F%2Fa.example%2F").target == "https://a.example/"


def test_legacy_targets_only_to_listed_hosts() -> None:
    """Only the listed hosts and their subdomains; lookalikes, credentials and non-http are refused."""
    domains = ["shop.example"]
    assert host_allowed("https://shop.example/cart", domains)
    assert host_allowed("http://www.shop.example/p?x=1", domains)
    assert host_allowed("https://WWW.Shop.Example./p", domains)
    for bad in ["https://evilshop.example/", "https://shop.example.evil.com/", "https://shop.example@evil.com/",
                "javascript:alert(1)//shop.example", "//shop.example/x",
                "https://evil.com/?u=https://shop.example/"]:  # fmt: skip
        assert not host_allowed(bad, domains), bad
    assert not host_allowed("https://shop.example/", [])


def test_scripts_and_link_scanners_are_not_people() -> None:
    """Microsoft's Safe Links, HTTP libraries and a GET naming no client at all are flagged; a
    push engagement (POST from the shop's app) needs no User-Agent, and browsers still count."""
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    later = sent + timedelta(minutes=5)
    for agent in ("Microsoft Office Safe Links", "Go-http-client/1.1", "Java/17.0.2",
                  "python-httpx/0.28.1", "axios/1.7.2"):  # fmt: skip
        assert bot_reason(method="GET", user_agent=agent, at=later, sent_at=sent) == "scanner_user_agent", agent
    for missing in (None, "", "  "):
        assert bot_reason(method="GET", user_agent=missing, at=later, sent_at=sent) == "no_user_agent"
    assert bot_reason(method="POST", user_agent=None, at=later, sent_at=sent) is None
    iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
    assert bot_reason(method="GET", user_agent=iphone, at=later, sent_at=sent) is None
