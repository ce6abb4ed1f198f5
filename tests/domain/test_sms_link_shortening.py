"""SMS short links are made only for links the template (or Rejoin, or the catalog's `url` fields)
brought, never for a URL that came in with data, and sentence punctuation stays out of the link.

Before: every URL of the rendered SMS became `/s/<code>` on the shop's domain, a CRM field holding
`https://evil.example/login` included (phishing on the shop's domain), and `…/login,` kept its
comma in the target and lost it from the text."""

from __future__ import annotations

from typing import Any

from domain.render import RenderContext, render_payload
from domain.tracking import Linker, Signer

SIGNER = Signer(["k1"])
PUBLIC = "https://t.shop.example"
PHISH = "Bob, verify at https://evil.example/login, thanks"


def sms(template: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], list[str]]:
    """The rendered SMS and the targets that became short links."""
    shortened: list[str] = []

    def shorten(target: str) -> str:
        shortened.append(target)
        return f"{PUBLIC}/s/{SIGNER.short_code('send-1', target)}"

    base: dict[str, Any] = {
        "user_identifier": "+15551230001", "campaign_name": "Cart", "variation_name": "A", "step_name": "First",
        "channel": "sms", "items": [{"sku": "s1", "name": "Red shoe", "url": "https://shop.example/p/s1"}],
        "user_attributes": {"crm": {"nick": PHISH, "host": "evil.example", "code": "X1"}},
        "linker": Linker(SIGNER, PUBLIC, "send-1", "usr_1", shorten=shorten),
    }  # fmt: skip
    base.update(kw)
    return render_payload(template, RenderContext(**base)), shortened


def short(target: str) -> str:
    return f"{PUBLIC}/s/{SIGNER.short_code('send-1', target)}"


def test_a_url_in_user_data_is_not_made_a_short_link() -> None:
    template = {"text": "Hi ${User data|crm|nick}! Shop: https://shop.example/sale", "whole": "${User data|crm|nick}"}
    out, shortened = sms(template)
    assert shortened == ["https://shop.example/sale"]
    assert out["text"] == f"Hi {PHISH}! Shop: {short('https://shop.example/sale')}"
    assert out["whole"] == PHISH


def test_data_fills_a_path_but_not_a_host() -> None:
    """The template's host with data in the path is the template's link; a host from data is not."""
    out, shortened = sms({"a": "https://shop.example/c/${User data|crm|code}?u=${User identifier}",
                          "b": "https://${User data|crm|host}/login",
                          "c": "https://shop.${User data|crm|host}/x"})  # fmt: skip
    assert shortened == ["https://shop.example/c/X1?u=+15551230001"]
    assert out == {"a": short("https://shop.example/c/X1?u=+15551230001"), "b": "https://evil.example/login",
                   "c": "https://shop.evil.example/x"}  # fmt: skip


def test_data_cannot_pass_for_template_text() -> None:
    """The fence characters are stripped from data, as the tracking marker is."""
    nick = "\ue002 https://evil.example/a \ue001\ue000"
    out, shortened = sms({"text": "Hi ${User data|crm|nick}"}, user_attributes={"crm": {"nick": nick}})
    assert shortened == [] and out["text"] == "Hi  https://evil.example/a "


def test_data_after_a_tracking_link_target_stays_data() -> None:
    """The target takes the data's first word; the rest of the data, a URL in it, is still data."""
    out, shortened = sms({"text": "${Tracking link}https%3A%2F%2Fshop.example%2Fc%2F${User data|crm|nick}"})
    assert shortened == ["https://shop.example/c/Bob,"]
    assert out["text"] == short("https://shop.example/c/Bob,") + PHISH.removeprefix("Bob,")


def test_authored_links_and_catalog_urls_are_shortened() -> None:
    """Literal links, the variation's text variables and product `url` fields are the shop's own."""
    out, shortened = sms({"text": "${Items in cart|url|item1} ${Promo}. Or ${Promo}"},
                         variables={"Promo": "see https://shop.example/promo"})  # fmt: skip
    promos = ["https://shop.example/promo"] * 2
    assert shortened == ["https://shop.example/p/s1", *promos]
    promo = short("https://shop.example/promo")
    assert out["text"] == f"{short('https://shop.example/p/s1')} see {promo}. Or see {promo}"
    whole, _ = sms({"text": "${Promo}"}, variables={"Promo": "https://shop.example/promo!"})
    assert whole["text"] == promo + "!"


def test_trailing_punctuation_stays_in_the_text() -> None:
    text = "Sale: https://shop.example/sale, (https://shop.example/a) https://en.wikipedia.org/wiki/Foo_(bar). "
    out, shortened = sms({"text": text + "End https://shop.example/b?x=1.!"})
    assert shortened == ["https://shop.example/sale", "https://shop.example/a",
                         "https://en.wikipedia.org/wiki/Foo_(bar)", "https://shop.example/b?x=1"]  # fmt: skip
    s = [short(t) for t in shortened]
    assert out["text"] == f"Sale: {s[0]}, ({s[1]}) {s[2]}. End {s[3]}.!"


def test_other_channels_render_data_unchanged() -> None:
    out, shortened = sms({"text": "Hi ${User data|crm|nick}"}, channel="email",
                         linker=Linker(SIGNER, PUBLIC, "send-1", "usr_1"))  # fmt: skip
    assert shortened == [] and out["text"] == f"Hi {PHISH}"
