"""Template language: parsing, validation, JSON-safe rendering, localization, tracking links."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from domain.campaign import CampaignSpec
from domain.feeds import parse_product
from domain.matching import product_record
from domain.render import (
    MissingRequired,
    RenderContext,
    TemplateError,
    parse_json_template,
    render_payload,
    validate_template,
)
from domain.tracking import Linker, Signer

SIGNER = Signer(["k1"])
PUBLIC = "https://t.shop.example"


def ctx(**kw: Any) -> RenderContext:
    base: dict[str, Any] = {
        "user_identifier": "ann@example.com", "campaign_name": "Cart", "variation_name": "A", "step_name": "First",
        "channel": "email",
        "items": [{"sku": "s1", "name": "Red shoe", "url": "https://shop.example/p/s1", "price": 20.0,
                   "lng:fr_FR:name": "Chaussure rouge"}],
    }  # fmt: skip
    base.update(kw)
    return RenderContext(**base)


def test_substitutes_inside_strings_and_keeps_whole_values_raw() -> None:
    """`${...}` fills string values; a string that is one variable keeps the raw value."""
    out = render_payload(
        {"to": "${User identifier}", "subject": "${dyCampaignName}: ${Items in cart|name|item1} for ${Items in cart|price|item1}",
         "items": "${Items in cart}", "n": 3},
        ctx(),
    )  # fmt: skip
    assert out["to"] == "ann@example.com"
    assert out["subject"] == "Cart: Red shoe for 20"
    assert out["items"][0]["sku"] == "s1" and out["n"] == 3


def test_hostile_values_cannot_break_json_or_inject_keys() -> None:
    """Quotes, newlines, braces and `${...}` in data stay inside their string and never expand."""
    evil = 'x", "admin": true, "y": "\n}${User identifier}\ue000TL\ue000https%3A%2F%2Fevil.example'
    c = ctx(items=[{"sku": "s1", "name": evil}], linker=Linker(SIGNER, PUBLIC, "send-1", "usr_1"))
    out = render_payload({"body": "Hi ${Items in cart|name|item1}!"}, c)
    assert set(out) == {"body"}
    assert "ann@example.com" not in out["body"] and "/t/c/" not in out["body"]
    assert json.loads(json.dumps(out)) == out


def test_missing_values_render_empty_and_required_raise() -> None:
    """An absent item renders empty; `${!...}` on an absent value raises MissingRequired."""
    out = render_payload({"b": "[${Items in cart|name|item2}]", "c": "${User data|crm|tier}"}, ctx())
    assert out == {"b": "[]", "c": ""}
    with pytest.raises(MissingRequired) as err:
        render_payload({"b": "${!Items in cart|name|item2}"}, ctx())
    assert err.value.variable == "Items in cart|name|item2"


def test_validation_names_unknown_variable_and_bad_index() -> None:
    """Unknown variables, item0/item21 and `${` in keys are errors naming the place."""
    with pytest.raises(TemplateError) as e1:
        validate_template({"a": {"b": ["ok", "${Nope}"]}}, set())
    assert e1.value.place == "payload.a.b.1" and "unknown variable" in e1.value.message
    with pytest.raises(TemplateError) as e2:
        validate_template({"a": "${Items in cart|name|item0}"}, set())
    assert "item1..item20" in e2.value.message
    with pytest.raises(TemplateError):
        validate_template({"a": "${Items in cart|name|item21}"}, set())
    with pytest.raises(TemplateError):
        validate_template({"${User identifier}": "x"}, set())
    with pytest.raises(TemplateError):
        validate_template({"a": "${Items in cart|name"}, set())
    validate_template({"a": "${Headline} ${!User data|crm|tier} ${Recommendations|popular|url|item3}"}, {"Headline"})


def _spec(payload: Any, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "C", "type": "cart_abandonment", "channel_priority": ["email"],
            "variations": [{"id": "a", "name": "A", "share": 100, "variables": variables or {},
                            "steps": [{"name": "S", "messages": {"email": {"payload": payload}}}]}]}  # fmt: skip


def test_campaign_spec_rejects_bad_templates_naming_the_message() -> None:
    """A campaign with an unknown variable or invalid JSON text fails validation at that message."""
    with pytest.raises(ValidationError) as e1:
        CampaignSpec.model_validate(_spec({"subject": "${Headline}"}))
    assert "variations.0.steps.0.messages.email.payload.subject" in str(e1.value)
    with pytest.raises(ValidationError) as e2:
        CampaignSpec.model_validate(_spec('{"subject": "x",}'))
    assert "invalid JSON" in str(e2.value) and "payload" in str(e2.value)
    spec = CampaignSpec.model_validate(_spec('{"subject": "${Headline}"}', {"Headline": "Hi"}))
    assert spec.variations[0].steps[0].messages["email"].payload == {"subject": "${Headline}"}  # type: ignore[index]


def test_localized_variables_and_product_fields_fall_back_to_default() -> None:
    """Variation texts and product names use the user's locale, then the language, then default."""
    variables = {"Headline": {"default": "Your cart", "fr_FR": "Votre panier", "de": "Ihr Warenkorb"}}
    t = {"h": "${Headline}", "n": "${Items in cart|name|item1}"}
    assert render_payload(t, ctx(variables=variables, locale="fr_FR")) == {"h": "Votre panier", "n": "Chaussure rouge"}
    assert render_payload(t, ctx(variables=variables, locale="de_AT")) == {"h": "Ihr Warenkorb", "n": "Red shoe"}
    assert render_payload(t, ctx(variables=variables, locale="es_ES")) == {"h": "Your cart", "n": "Red shoe"}
    assert render_payload(t, ctx(variables=variables)) == {"h": "Your cart", "n": "Red shoe"}
    with pytest.raises(ValidationError):
        CampaignSpec.model_validate(_spec({"h": "${H}"}, {"H": {"fr_FR": "x"}}))


def test_product_feed_translations_are_rendered() -> None:
    """A feed's `lng:fr_FR:name` column (stored nested under `attributes.lng`) names the product
    for French users; other locales keep the default name."""
    parsed = parse_product(["sku", "name", "price", "lng:fr_FR:name"], ["s1", "Red shoe", "20", "Chaussure rouge"])
    assert isinstance(parsed, dict), parsed
    item = product_record("s1", {"s1": parsed})
    t = {"n": "${Items in cart|name|item1}"}
    assert render_payload(t, ctx(items=[item], locale="fr_FR")) == {"n": "Chaussure rouge"}
    assert render_payload(t, ctx(items=[item], locale="de_DE")) == {"n": "Red shoe"}


def test_product_translations_fall_back_to_the_same_language() -> None:
    """As variation texts do: the exact locale first, then any translation of the same language, in
    either stored form and either spelling (`fr-CA`, `fr_FR`), then the plain field."""
    feed = parse_product(["sku", "name", "lng:fr_FR:name", "lng:fr_CA:name"], ["s1", "Shoe", "Chaussure", "Soulier"])
    assert isinstance(feed, dict), feed
    from_feed = product_record("s1", {"s1": feed})
    from_api = {"sku": "s2", "name": "Hat", "lng:de-DE:name": "Hut", "lng:fr_FR:name": ""}
    t = {"a": "${Items in cart|name|item1}", "b": "${Items in cart|name|item2}"}
    items = [from_feed, from_api]
    assert render_payload(t, ctx(items=items, locale="fr-CA")) == {"a": "Soulier", "b": "Hat"}
    assert render_payload(t, ctx(items=items, locale="fr_BE")) == {"a": "Chaussure", "b": "Hat"}
    assert render_payload(t, ctx(items=items, locale="de_AT")) == {"a": "Shoe", "b": "Hut"}
    assert render_payload(t, ctx(items=items, locale="de_de")) == {"a": "Shoe", "b": "Hut"}
    assert render_payload(t, ctx(items=items, locale=None)) == {"a": "Shoe", "b": "Hat"}


def test_product_urls_and_tracking_link_become_signed_links() -> None:
    """Item URLs are wrapped; `${Tracking link}` + encoded target becomes one signed link."""
    linker = Linker(SIGNER, PUBLIC, "send-1", "usr_1")
    target = "https://shop.example/cart?x=1&y=2"
    out = render_payload(
        {"p": "${Items in cart|url|item1}", "html": f'<a href="${{Tracking link}}{quote(target, safe="")}">Cart</a>',
         "px": "${Tracking pixel}"},
        ctx(linker=linker),
    )  # fmt: skip
    assert out["p"].startswith(PUBLIC + "/t/c/")
    assert SIGNER.verify("c", out["p"].rsplit("/", 1)[1])["t"] == "https://shop.example/p/s1"  # type: ignore[index]
    href = out["html"].split('"')[1]
    assert SIGNER.verify("c", href.rsplit("/", 1)[1]) == {"k": "send-1", "u": "usr_1", "t": target}
    assert '<img src="' + PUBLIC + "/t/o/" in out["px"] and 'width="1"' in out["px"]


def test_sms_links_are_shortened() -> None:
    """On SMS every link in the text becomes a first-party short link."""
    seen: list[str] = []

    def shorten(target: str) -> str:
        seen.append(target)
        return f"{PUBLIC}/s/{SIGNER.short_code('send-1', target)}"

    linker = Linker(SIGNER, PUBLIC, "send-1", "usr_1", shorten=shorten)
    out = render_payload({"text": "Back: ${Items in cart|url|item1} or https://shop.example/sale now"}, ctx(linker=linker, channel="sms"))
    assert seen == ["https://shop.example/p/s1", "https://shop.example/sale"]
    codes = [w.rsplit("/", 1)[1] for w in out["text"].split() if w.startswith(PUBLIC)]
    assert len(codes) == 2 and all(len(c) >= 8 and c.isalnum() for c in codes)


def test_native_email_tracking_wraps_every_href_and_adds_the_pixel() -> None:
    """With auto tracking, every http(s) href is signed and the pixel opens the body, once."""
    linker = Linker(SIGNER, PUBLIC, "send-1", "usr_1")
    html_body = ('<html><body class="x"><a href="https://shop.example/a?x=1&amp;y=2">A</a>'
                 "<a href='mailto:help@shop.example'>Mail</a></body></html>")  # fmt: skip
    out = render_payload({"html": html_body, "text": "https://shop.example/a"}, ctx(linker=linker, auto_tracking=True))
    href = out["html"].split('href="')[1].split('"')[0]
    assert SIGNER.verify("c", href.rsplit("/", 1)[1])["t"] == "https://shop.example/a?x=1&y=2"  # type: ignore[index]
    assert "mailto:help@shop.example" in out["html"] and out["text"] == "https://shop.example/a"
    assert out["html"].index("/t/o/") < out["html"].index("href=") and out["html"].count("/t/o/") == 1
    plain = render_payload({"html": html_body}, ctx(linker=linker))
    assert plain == {"html": html_body}


HOSTILE = '<script>alert(1)</script>" onmouseover="alert(2)\' &amp;'


def test_html_fields_escape_hostile_data_but_keep_tracking_markup() -> None:
    """Data substituted into HTML fields is escaped text; the pixel, tracking links and the
    author's free-text variables go in as they are; other fields and JSON types are untouched."""
    linker = Linker(SIGNER, PUBLIC, "send-1", "usr_1")
    target = "https://shop.example/cart?x=1&y=2"
    c = ctx(items=[{"sku": "s1", "name": HOSTILE, "url": "https://shop.example/p/s1", "price": 20.0}],
            user_attributes={"crm": {"tier": "<b>gold</b>"}}, variables={"Footer": "<i>Shop & Co</i>"},
            linker=linker)  # fmt: skip
    template = {
        "html": (f'${{Tracking pixel}}<p title="${{Items in cart|name|item1}}">${{Items in cart|name|item1}}</p>'
                 f'<a href="${{Items in cart|url|item1}}">x</a>'
                 f'<a href="${{Tracking link}}{quote(target, safe="")}">cart</a>'
                 '<img src="${Tracking pixel url}">${Footer} ${User data|crm|tier} ${Items in cart|price|item1}'),
        "text": "${Items in cart|name|item1}",
        "body_html": "${Items in cart|name|item1}",
        "content": [{"type": "text/html", "value": "<b>${Items in cart|name|item1}</b>"},
                    {"type": "text/plain", "value": "${Items in cart|name|item1}"}],
        "htmlPrice": "${Items in cart|price|item1}",
    }  # fmt: skip
    out = render_payload(template, c)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&quot; onmouseover=&quot;alert(2)&#x27; &amp;amp;"
    assert out["html"].count(escaped) == 2 and "<script>" not in out["html"] and 'onmouseover="' not in out["html"]
    assert out["html"].startswith('<img src="' + PUBLIC + "/t/o/")  # the pixel is markup: not escaped
    tokens = [h.split('"')[0].rsplit("/", 1)[1] for h in out["html"].split('href="')[1:]]
    assert [SIGNER.verify("c", t)["t"] for t in tokens] == ["https://shop.example/p/s1", target]  # type: ignore[index]
    assert out["html"].split('<img src="')[2].startswith(PUBLIC + "/t/o/")
    assert out["html"].endswith("<i>Shop & Co</i> &lt;b&gt;gold&lt;/b&gt; 20")
    assert out["text"] == HOSTILE and out["body_html"] == escaped
    assert out["content"] == [
        {"type": "text/html", "value": f"<b>{escaped}</b>"},
        {"type": "text/plain", "value": HOSTILE},
    ]
    assert out["htmlPrice"] == 20.0  # a whole-string number keeps its JSON type
    assert json.loads(json.dumps(out)) == out


def test_injected_markup_cannot_become_a_tracked_link() -> None:
    """Native tracking wraps the template's hrefs only: an href smuggled in a product name stays text."""
    linker = Linker(SIGNER, PUBLIC, "send-1", "usr_1")
    name = '"><a href="https://evil.example/phish">win</a>'
    c = ctx(items=[{"sku": "s1", "name": name}], linker=linker, auto_tracking=True)
    out = render_payload({"html": "<body><p>${Items in cart|name|item1}</p></body>"}, c)
    assert linker.minted == [] and "evil.example" in out["html"] and 'href="https://evil' not in out["html"]


def test_tracking_link_target_from_data_in_html() -> None:
    """`${Tracking link}` followed by a data value: the signed target is the real URL (entities
    decoded); without a linker the value is still written escaped, so it cannot end the attribute."""
    c = ctx(user_attributes={"link": "https://shop.example/?a=1&b=2", "evil": "%22%3E%3Cscript%3E"},
            linker=Linker(SIGNER, PUBLIC, "send-1", "usr_1"))  # fmt: skip
    out = render_payload({"html": '<a href="${Tracking link}${User data|x|link}">a</a>'}, c)
    signed = SIGNER.verify("c", out["html"].split('"')[1].rsplit("/", 1)[1])
    assert signed is not None and signed["t"] == "https://shop.example/?a=1&b=2"
    untracked = ctx(user_attributes=c.user_attributes)
    bare = render_payload({"html": '<a href="${Tracking link}${User data|x|evil}">a</a>'}, untracked)
    assert bare == {"html": '<a href="&quot;&gt;&lt;script&gt;">a</a>'}


def test_product_urls_that_are_not_http_render_empty_with_or_without_tracking() -> None:
    """A feed URL like `javascript:...` (or relative, or with credentials) never reaches an href."""
    linker = Linker(SIGNER, PUBLIC, "send-1", "usr_1")
    bad = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<b>x</b>", "/p/s1", "https://u:p@shop.example/"]
    for url in bad:
        for tracking in (linker, None):
            c = ctx(items=[{"sku": "s1", "name": "Shoe", "url": url}], linker=tracking)
            out = render_payload({"html": '<a href="${Items in cart|url|item1}">x</a>', "u": "${Items in cart|url|item1}"}, c)
            assert out == {"html": '<a href="">x</a>', "u": ""}, (url, tracking, out)
    c = ctx(items=[{"sku": "s1", "name": "Shoe", "url": "https://shop.example/p/s1"}])
    assert render_payload({"u": "${Items in cart|url|item1}"}, c) == {"u": "https://shop.example/p/s1"}


def test_whole_item_lists_wrap_product_urls_in_tracking_links() -> None:
    """`${Items in cart}` / `${Viewed items}` give items whose URLs are signed click links, like
    `${Items in cart|url|item1}`, without changing the context's own items."""
    linker = Linker(SIGNER, PUBLIC, "send-1", "usr_1")
    c = ctx(linker=linker)
    before = [dict(i) for i in c.items]
    out = render_payload({"cart": "${Items in cart}", "viewed": "${Viewed items}"}, c)
    for items in (out["cart"], out["viewed"]):
        (item,) = items
        assert item["url"].startswith(PUBLIC + "/t/c/") and item["sku"] == "s1" and item["price"] == 20.0
        signed = SIGNER.verify("c", item["url"].rsplit("/", 1)[1])
        assert signed is not None and signed["t"] == "https://shop.example/p/s1"
    assert c.items == before


def test_whole_item_lists_render_unsafe_urls_empty() -> None:
    """A catalog `javascript:` URL (also as a translation) never reaches the provider through a whole
    list (a variable, or the default payload of a step without a template): it renders empty as `${Viewed product|url}` does, tracked or not; a safe one stays as-is untracked."""
    bad = "javascript:alert(document.cookie)"
    for tracking in (Linker(SIGNER, PUBLIC, "send-1", "usr_1"), None):
        items = [{"sku": "s1", "url": bad}, {"sku": "s2", "url": "https://shop.example/p/s2", "lng:fr_FR:url": bad}]
        c = ctx(items=items, linker=tracking, locale="fr_FR")
        out = render_payload({"v": "${Viewed items}", "one": "${Viewed product|url}", "t": "${Trigger items}"}, c)
        assert out["one"] == ""
        default = render_payload(None, c)["items"]  # a step without a template sends the list too
        for listed in (out["v"], out["t"], default):
            assert [i["url"] for i in listed] == ["", ""] and "javascript" not in json.dumps(listed)
    plain = render_payload({"v": "${Viewed items}"}, ctx())
    assert plain["v"][0]["url"] == "https://shop.example/p/s1"


def test_whole_item_lists_are_localized_like_single_fields() -> None:
    """List items carry each field in the user's locale, as `${Items in cart|name|item1}` does,
    without the raw translation keys; with no translation for the locale the plain field stays."""
    feed = {"sku": "s1", "name": "Shoe", "lng": {"fr_FR": {"name": "Chaussure", "subtitle": "Rouge"}}}
    c = ctx(items=[feed], locale="fr_CA")
    out = render_payload({"items": "${Items in cart}", "n": "${Items in cart|name|item1}"}, c)
    assert out == {"items": [{"sku": "s1", "name": "Chaussure", "subtitle": "Rouge"}], "n": "Chaussure"}
    assert render_payload({"items": "${Items in cart}"}, ctx(locale="de_DE"))["items"] == [
        {"sku": "s1", "name": "Red shoe", "url": "https://shop.example/p/s1", "price": 20.0}
    ]


@pytest.mark.parametrize("depth", [40, 300, 5000])
def test_a_payload_given_as_json_text_nests_no_deeper_than_a_body(depth: int) -> None:
    """JSON text got round the request's nesting limit, and deeper still failed to parse or to
    serialise (500s): it is refused at the payload, as any other bad template."""
    text = '{"a": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(ValidationError) as err:
        CampaignSpec.model_validate({
            "name": "c", "type": "custom_trigger", "channel_priority": ["email"],
            "trigger": {"wait": "PT1H", "event_name": "E"},
            "variations": [{"id": "a", "name": "A", "share": 100,
                            "steps": [{"name": "s", "messages": {"email": {"payload": text}}}]}],
        })  # fmt: skip
    assert "nest at most 32 levels" in str(err.value)
    assert parse_json_template('{"a": ' + "[" * 30 + "]" * 30 + "}")  # within the limit
