"""Message rendering: a step's JSON payload template filled for one recipient. Pure, no I/O.

Variables use the seeds' `${...}` syntax (reference: docs/messages.md) and are substituted
inside JSON string values of the parsed template only, in a single pass, so a value holding
quotes, newlines or `${...}` can never break the payload, add keys or expand again. A string
that is exactly one variable takes that variable's value as-is (lists stay lists).

Values landing in HTML (a string under a key named like `html`, `html_body`, `bodyHtml`, or the
`value`/`content` of a `{"type": "text/html"}` object) are HTML-escaped, so data like a product
named `<script>` or `" onmouseover=` stays text. Tracking links and the pixel are Rejoin's own
markup and URLs, and free-text variables are the template author's own text: both go in as-is.

`${Unsubscribe link}` puts the send's one-click unsubscribe URL in the message; the delivery gives
the same URL to the adapters that build the email (SMTP, SendGrid: `OutboundMessage.unsubscribe_url`,
their `List-Unsubscribe` header), never as a payload key that every other vendor would receive.

Missing values render empty so templates can hide empty product blocks; `${!Name}` marks a
variable required and rendering then raises `MissingRequired`, which the delivery activity
records as a skipped step (no channel fallback: the data, not the channel, is missing).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field

from domain.tracking import Linker, safe_target

VARIABLE = re.compile(r"\$\{([^{}]*)\}")
MAX_ITEM = 20  # item1..item20
ITEM_LISTS = {"items in cart", "trigger items", "dropped price items", "viewed items"}
RECO_STRATEGIES = {"similar", "popular"}
URL_FIELDS = {"url"}  # product fields wrapped in a click-tracking link
DEFAULT_LOCALE = "default"
# `${Tracking link}` renders this marker; the URL-encoded target the template appends after it
# is then replaced by one signed link. The private-use characters are stripped from every
# substituted value, so data can never forge a tracked link.
_TL = "\ue000TL\ue000"
_TL_TARGET = re.compile(re.escape(_TL) + r"([^\s\"'<>\ue000]*)")
_SMS_URL = re.compile(r"https?://[^\s\"'<>]+")
# SMS: a substituted value from data (user data, the user identifier, product and event fields)
# is fenced by these while the text is assembled, so `_shorten_sms` knows a URL that data brought
# (never made a short link on the shop's domain); they are stripped from data as _TL is, and from
# the result.
_DATA_OPEN, _DATA_CLOSE = "\ue001", "\ue002"
_NO_MARKS = str.maketrans("", "", "\ue000\ue001\ue002")
_NO_FENCES = str.maketrans("", "", _DATA_OPEN + _DATA_CLOSE)
# Sentence punctuation after a URL is the text's, not the link's (`…/login,` or `(…/sale)`).
_URL_TRAILING = ".,;:!?)]}'\""
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_HREF = re.compile(r"""(href\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
_BODY = re.compile(r"<body\b[^>]*>", re.IGNORECASE)

LocalizedText = str | dict[str, str]


class RenderContext(BaseModel):
    """Everything a template may refer to for one send; built by the delivery activity."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    user_identifier: str
    campaign_name: str
    variation_name: str
    step_name: str
    channel: str
    locale: str | None = None
    items: list[dict[str, Any]] = Field(default_factory=list)  # trigger items, in trigger order
    variables: dict[str, LocalizedText] = Field(default_factory=dict)  # per-variation text variables
    user_attributes: dict[str, Any] = Field(default_factory=dict)
    products: dict[str, dict[str, Any]] = Field(default_factory=dict)  # sku -> record, for ${Product|sku|f}
    recommendations: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)  # strategy -> records
    linker: Linker | None = None
    auto_tracking: bool = False  # email: wrap every href and add the pixel (native email tracking)
    extra: dict[str, Any] = Field(default_factory=dict)


class TemplateError(ValueError):
    """A template mistake found at save time; `place` is the dotted path inside the payload."""

    def __init__(self, place: str, message: str) -> None:
        super().__init__(f"{place}: {message}" if place else message)
        self.place = place
        self.message = message


class MissingRequired(Exception):
    """A `${!...}` variable had no value for this recipient: the step must not be sent."""

    def __init__(self, variable: str) -> None:
        super().__init__(f"required variable ${{{variable}}} is empty")
        self.variable = variable
        self.step_name = ""  # filled in by the delivery activity
        self.variation_id = ""


@dataclass(frozen=True)
class Ref:
    kind: str
    args: tuple[str, ...]
    required: bool
    raw: str


_SIMPLE = {
    "user identifier": "user_identifier",
    "dycampaignname": "campaign_name",
    "campaign name": "campaign_name",
    "variation name": "variation_name",
    "step name": "step_name",
    "tracking link": "tracking_link",
    "tracking pixel": "tracking_pixel",
    "tracking pixel url": "tracking_pixel_url",
    "push tracking data": "push_tracking",
    "unsubscribe link": "unsubscribe_link",
}


def _item_index(which: str) -> int:
    m = re.fullmatch(r"item(\d+)", which.strip().lower())
    if not m or not 1 <= int(m.group(1)) <= MAX_ITEM:
        raise ValueError(f"item index '{which}' must be item1..item{MAX_ITEM}")
    return int(m.group(1)) - 1


def parse_ref(raw: str, variables: set[str] | None = None) -> Ref:
    """Parse the inside of `${...}`; `variables` (when given) are the names free text may use."""
    body = raw.strip()
    required = body.startswith("!")
    if required:
        body = body[1:].strip()
    parts = [p.strip() for p in body.split("|")]
    head = parts[0].lower()
    if not body:
        raise ValueError("empty variable")
    if head in _SIMPLE and len(parts) == 1:
        return Ref(_SIMPLE[head], (), required, raw)
    if head in ITEM_LISTS:
        if len(parts) == 1:
            return Ref("item_list", (), required, raw)
        if len(parts) != 3 or not parts[1]:
            raise ValueError(f"use ${{{parts[0]}|field|itemN}}")
        return Ref("item", (parts[1], str(_item_index(parts[2]))), required, raw)
    if head == "viewed product":
        if len(parts) != 2 or not parts[1]:
            raise ValueError("use ${Viewed product|field}")
        return Ref("item", (parts[1], "0"), required, raw)
    if head == "product":
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError("use ${Product|sku|field}")
        return Ref("product", (parts[1], parts[2]), required, raw)
    if head == "user data":
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError("use ${User data|feed|property}")
        return Ref("user_data", (parts[1], parts[2]), required, raw)
    if head == "recommendations":
        if len(parts) != 4 or parts[1].lower() not in RECO_STRATEGIES or not parts[2]:
            raise ValueError("use ${Recommendations|similar or popular|field|itemN}")
        return Ref("reco", (parts[1].lower(), parts[2], str(_item_index(parts[3]))), required, raw)
    if len(parts) == 1 and (variables is None or body in variables):
        return Ref("variable", (body,), required, raw)
    raise ValueError(f"unknown variable ${{{raw.strip()}}}")


def refs_in(template: Any) -> list[Ref]:
    """Every well-formed variable reference of a template (for deciding what data to load)."""
    found: list[Ref] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            for m in VARIABLE.finditer(v):
                try:
                    found.append(parse_ref(m.group(1)))
                except ValueError:
                    pass
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, Mapping):
            for x in v.values():
                walk(x)

    walk(template)
    return found


def validate_template(template: Any, variables: set[str], place: str = "payload") -> None:
    """Raise TemplateError naming the first bad place: unknown variables, bad indices, `${` in keys."""
    if isinstance(template, str):
        for m in VARIABLE.finditer(template):
            try:
                parse_ref(m.group(1), variables)
            except ValueError as err:
                raise TemplateError(place, str(err)) from None
        rest = VARIABLE.sub("", template)
        if "${" in rest:
            raise TemplateError(place, "unterminated ${ (variables look like ${Name})")
    elif isinstance(template, list):
        for i, v in enumerate(template):
            validate_template(v, variables, f"{place}.{i}")
    elif isinstance(template, Mapping):
        for k, v in template.items():
            if "${" in str(k):
                raise TemplateError(f"{place}.{k}", "variables are not allowed in keys")
            validate_template(v, variables, f"{place}.{k}")


# As deep as a request body may nest (REJOIN_MAX_JSON_DEPTH's default): a payload given as JSON
# text would otherwise get round that limit, and deeper still fail to parse or serialise (500s).
MAX_PAYLOAD_DEPTH = 32


def parse_json_template(text: str, place: str = "payload") -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise TemplateError(place, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:  # nested past the parser's own limit
        raise TemplateError(place, f"a message payload may nest at most {MAX_PAYLOAD_DEPTH} levels") from None
    if _depth_exceeds(value, MAX_PAYLOAD_DEPTH):
        raise TemplateError(place, f"a message payload may nest at most {MAX_PAYLOAD_DEPTH} levels")
    if not isinstance(value, dict):
        raise TemplateError(place, "a message payload must be a JSON object")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]  # without recursion: the value may be deep
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


# ---------------------------------------------------------------------------------- values


def localized(value: LocalizedText | None, locale: str | None) -> str:
    """A variation variable's text for the locale: exact, then same language, then default."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if locale:
        if locale in value:
            return value[locale]
        lang = locale.replace("-", "_").split("_")[0].lower()
        for key, text in value.items():
            if key.replace("-", "_").split("_")[0].lower() == lang:
                return text
    return value.get(DEFAULT_LOCALE, "")


def product_field(record: Mapping[str, Any], field: str, locale: str | None) -> Any:
    """A product field, preferring its translation for `locale` as variation texts do (`localized`): the
    exact locale, then any translation of the same language (`fr_FR` for `fr_CA`), then the plain field.
    A translation is an attribute `lng:<locale>:<field>` (as set through the products API) or, as a
    product feed's `lng:fr_FR:name` columns are stored, `lng: {<locale>: {<field>: ...}}`."""
    if not locale:
        return record.get(field)
    translations = _translations(record, field)
    wanted = _locale_key(locale)
    for key, text in translations.items():
        if _locale_key(key) == wanted:
            return text
    language = wanted.split("_")[0]
    for key, text in translations.items():
        if _locale_key(key).split("_")[0] == language:
            return text
    return record.get(field)


def _locale_key(locale: str) -> str:
    return locale.replace("-", "_").lower()


def _translations(record: Mapping[str, Any], field: str) -> dict[str, Any]:
    """The product's non-empty translations of `field` by locale, flat attributes first."""
    found: dict[str, Any] = {}
    suffix = f":{field}"
    for key, text in record.items():
        if key.startswith("lng:") and key.endswith(suffix) and text not in (None, ""):
            found.setdefault(key[4 : -len(suffix)], text)
    nested = record.get("lng")
    if isinstance(nested, Mapping):
        for locale, fields in nested.items():
            if isinstance(fields, Mapping) and fields.get(field) not in (None, ""):
                found.setdefault(str(locale), fields[field])
    return found


def _field_value(record: Mapping[str, Any], field: str, ctx: RenderContext) -> Any:
    """One field of a record as a template gets it: localized, and a URL made safe and tracked."""
    value = product_field(record, field, ctx.locale)
    if field.lower() in URL_FIELDS and isinstance(value, str):
        if not safe_target(value):
            return ""  # a feed's `javascript:`/relative/odd URL never reaches an href: renders empty
        if ctx.linker is not None:
            return ctx.linker.click(value)
    return value


def _record_value(records: list[dict[str, Any]], index: int, field: str, ctx: RenderContext) -> Any:
    if index >= len(records):
        return None
    return _field_value(records[index], field, ctx)


def _fields(record: Mapping[str, Any]) -> list[str]:
    """The record's field names, a field only translated (`lng:fr_FR:subtitle`) included, without the
    translation keys themselves (`lng:<locale>:<field>`, the feed's nested `lng`): see `product_field`."""
    names = [k for k in record if k != "lng" and not k.startswith("lng:")]
    translated = [k.split(":", 2)[2] for k in record if k.startswith("lng:") and k.count(":") >= 2]
    nested = record.get("lng")
    if isinstance(nested, Mapping):
        translated += [str(f) for fields in nested.values() if isinstance(fields, Mapping) for f in fields]
    return list(dict.fromkeys(names + translated))


def _list_value(records: list[dict[str, Any]], ctx: RenderContext) -> list[dict[str, Any]]:
    """A whole item list (`${Items in cart}`...): copies of the records with every field as a single
    reference renders it, so a list can't be the way around link tracking or the URL check. The
    translations are left out: the fields already hold the locale's text, and a translated `url`
    kept raw would reach the provider unchecked."""
    out: list[dict[str, Any]] = []
    for record in records:
        copy = {f: _field_value(record, f, ctx) for f in _fields(record)}
        # A field only translated, and not into this locale, is absent, as in the record.
        out.append({f: v for f, v in copy.items() if v is not None or f in record})
    return out


def resolve(ref: Ref, ctx: RenderContext) -> Any:
    k = ref.kind
    if k in ("user_identifier", "campaign_name", "variation_name", "step_name"):
        return getattr(ctx, k)
    if k == "tracking_link":
        return _TL
    if k == "tracking_pixel":
        if ctx.linker is None:
            return ""
        return (
            f'<img src="{ctx.linker.pixel_url()}" alt="" width="1" height="1" border="0" '
            'style="height:1px!important;width:1px!important;border-width:0!important;'
            'margin:0!important;padding:0!important;" />'
        )
    if k == "tracking_pixel_url":
        return ctx.linker.pixel_url() if ctx.linker else ""
    if k == "push_tracking":
        return {"rjt": ctx.linker.push_token()} if ctx.linker else {}
    if k == "unsubscribe_link":
        return ctx.linker.unsubscribe_url() if ctx.linker else ""
    if k == "item_list":
        return _list_value(ctx.items, ctx)
    if k == "item":
        return _record_value(ctx.items, int(ref.args[1]), ref.args[0], ctx)
    if k == "product":
        record = ctx.products.get(ref.args[0])
        return None if record is None else _record_value([record], 0, ref.args[1], ctx)
    if k == "user_data":
        feed, prop = ref.args
        nested = ctx.user_attributes.get(feed)
        if isinstance(nested, Mapping) and prop in nested:
            return nested[prop]
        return ctx.user_attributes.get(prop)
    if k == "reco":
        return _record_value(ctx.recommendations.get(ref.args[0], []), int(ref.args[2]), ref.args[1], ctx)
    if k == "variable":
        name = ref.args[0]
        if name in ctx.variables:
            return localized(ctx.variables[name], ctx.locale)
        return ctx.extra.get(name)
    return None


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


# Not escaped in HTML: Rejoin's own tracking markup/URLs, and the author's free-text variables.
_RAW_IN_HTML = {
    "tracking_link", "tracking_pixel", "tracking_pixel_url", "push_tracking", "unsubscribe_link", "variable",
}


def is_html_key(key: str) -> bool:
    """Payload keys whose string values are HTML: `html`, `html_body`, `body_html`, `htmlBody`..."""
    k = key.lower().replace("_", "").replace("-", "")
    return k.startswith("html") or k.endswith("html")


def _html_children(m: Mapping[str, Any]) -> set[str]:
    """Keys of `m` holding HTML: html-named keys, and `value`/`content` of a typed text/html part."""
    typed = isinstance(m.get("type"), str) and m["type"].strip().lower() == "text/html"
    return {k for k in m if is_html_key(str(k)) or (typed and k in ("value", "content"))}


def _value(raw: str, ctx: RenderContext, in_html: bool = False, whole: bool = False) -> Any:
    try:
        ref = parse_ref(raw)
    except ValueError:
        return ""  # validated at save time; an old template with a bad variable renders empty
    if ref.kind == "tracking_link":
        return _TL  # the only source of the marker: data never carries it (see _clean)
    v = resolve(ref, ctx)
    if ref.required and _empty(v):
        raise MissingRequired(raw.strip().lstrip("!").strip())
    v = _clean(v)
    # In HTML, data becomes escaped text; a whole-string number or list keeps its JSON type.
    if in_html and ref.kind not in _RAW_IN_HTML and (isinstance(v, str) or not whole):
        return html.escape(_as_text(v))
    return v


def _clean(v: Any) -> Any:
    """Strip the tracking and data-fence marker characters from data so data cannot forge
    tracked links or pass for the template's own text."""
    if isinstance(v, str):
        return v.translate(_NO_MARKS)
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    return v


def _as_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _links(text: str, ctx: RenderContext, in_html: bool = False) -> str:
    """Replace `${Tracking link}<url-encoded target>` with one signed click link. In HTML the
    target is read as the browser would (entities decoded) and the link written escaped."""
    if _TL not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        raw = m.group(1).translate(_NO_FENCES)  # a target may be built with data (SMS fences it)
        target = unquote(html.unescape(raw) if in_html else raw)
        if ctx.linker is not None and not target.startswith(ctx.linker.public_url + "/"):
            target = ctx.linker.click(target)  # (an already tracked link, e.g. a product URL, is never wrapped twice)
        # The target's fences stay, after the link: data whose start it took still ends as data.
        fences = "".join(c for c in m.group(1) if c in _DATA_OPEN + _DATA_CLOSE)
        return (html.escape(target) if in_html else target) + fences

    return _TL_TARGET.sub(sub, text).replace(_TL, "")


def render_value(value: Any, ctx: RenderContext, in_html: bool = False) -> Any:
    if isinstance(value, str):
        whole = VARIABLE.fullmatch(value)
        if whole:
            v = _value(whole.group(1), ctx, in_html, whole=True)
            if v is None:
                return ""  # missing renders empty, whatever the variable's type
            if not isinstance(v, str):
                return v
            v = _links(v, ctx, in_html)
            return v if _from_data(whole.group(1)) else _shorten_sms(v, ctx)
        text = VARIABLE.sub(lambda m: _substituted(m.group(1), ctx, in_html), value)
        return _shorten_sms(_links(text, ctx, in_html), ctx)
    if isinstance(value, list):
        return [render_value(v, ctx, in_html) for v in value]
    if isinstance(value, Mapping):
        markup = _html_children(value)
        return {k: render_value(v, ctx, in_html or k in markup) for k, v in value.items()}
    return value


# What the template's author wrote (campaign, variation and step names, the variation's text
# variables) and Rejoin's own links. Everything else is data: the user identifier, user data, and
# product, event and recommendation fields (whose `url` fields are tracked links already).
_AUTHORED = {
    "campaign_name", "variation_name", "step_name", "variable", "tracking_link", "tracking_pixel",
    "tracking_pixel_url", "push_tracking", "unsubscribe_link",
}  # fmt: skip


def _shortening(ctx: RenderContext) -> bool:
    return ctx.linker is not None and ctx.linker.shorten is not None


def _from_data(raw: str) -> bool:
    try:
        return parse_ref(raw).kind not in _AUTHORED
    except ValueError:
        return True  # renders empty anyway


def _substituted(raw: str, ctx: RenderContext, in_html: bool) -> str:
    """A variable's text inside a string; on SMS, a value from data fenced (see `_shorten_sms`)."""
    text = _as_text(_value(raw, ctx, in_html))
    if text and _shortening(ctx) and _from_data(raw):
        return _DATA_OPEN + text + _DATA_CLOSE
    return text


def _url_end(url: str) -> int:
    """Where the link ends: sentence punctuation after it is left out (a closing bracket only when
    the URL does not open one: `…/Foo_(bar)` keeps its own)."""
    end = len(url)
    while end > 0 and (url[end - 1] in _URL_TRAILING or url[end - 1] in _DATA_OPEN + _DATA_CLOSE):
        ch = url[end - 1]
        if ch in _CLOSERS and url.count(_CLOSERS[ch], 0, end) >= url.count(ch, 0, end):
            break
        end -= 1
    return end


def _shorten_sms(text: str, ctx: RenderContext) -> str:
    """SMS: each http(s) link whose scheme and host the template wrote (or an authored variable,
    or Rejoin) becomes a short tracked link on the shop's domain. A link data brought (a CRM field
    holding `https://evil.example/login`), or whose host data fills in, is left as it is: a short
    link would lend it the shop's domain. Data may fill a link's path or query."""
    linker = ctx.linker
    if linker is None or linker.shorten is None:
        return text

    def sub(m: re.Match[str]) -> str:
        url = m.group(0)
        end = _url_end(url)
        link, rest = url[:end], url[end:]
        start = m.start()
        in_data = text.rfind(_DATA_OPEN, 0, start) > text.rfind(_DATA_CLOSE, 0, start)
        authority = link.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        target = link.translate(_NO_FENCES)
        if in_data or _DATA_OPEN in authority or _DATA_CLOSE in authority or target.startswith(linker.public_url):
            return url
        return linker.click(target) + rest

    return _SMS_URL.sub(sub, text).translate(_NO_FENCES)


def auto_track(value: Any, ctx: RenderContext, state: dict[str, bool] | None = None) -> Any:
    """Native email tracking: every http(s) href becomes a tracked link; the pixel goes at the
    top of the first HTML body that has none yet."""
    linker = ctx.linker
    if linker is None:
        return value
    state = {"pixel": False} if state is None else state
    if isinstance(value, str):
        def wrap(m: re.Match[str]) -> str:
            target = html.unescape(m.group(3))
            url = target if target.startswith(linker.public_url + "/") else linker.click(target)
            return f"{m.group(1)}{m.group(2)}{html.escape(url)}{m.group(2)}"

        out = _HREF.sub(wrap, value)
        body = _BODY.search(out)
        if body and not state["pixel"] and "/t/o/" not in out:
            pixel = resolve(Ref("tracking_pixel", (), False, "Tracking pixel"), ctx)
            out = out[: body.end()] + pixel + out[body.end() :]
            state["pixel"] = True
        return out
    if isinstance(value, list):
        return [auto_track(v, ctx, state) for v in value]
    if isinstance(value, Mapping):
        out_map = {k: auto_track(v, ctx, state) for k, v in value.items()}
        # An HTML fragment without <body> (common in payloads): the pixel opens the html field.
        for k, v in out_map.items():
            if not state["pixel"] and is_html_key(str(k)) and isinstance(v, str) and "/t/o/" not in v:
                out_map[k] = resolve(Ref("tracking_pixel", (), False, "Tracking pixel"), ctx) + v
                state["pixel"] = True
        return out_map
    return value



def default_payload(ctx: RenderContext) -> dict[str, Any]:
    """The payload sent when a step's message has no template: enough to see what happened."""
    return {
        "to": ctx.user_identifier,
        "channel": ctx.channel,
        "campaign": ctx.campaign_name,
        "variation": ctx.variation_name,
        "step": ctx.step_name,
        "items": _list_value(ctx.items, ctx),  # as `${Items in cart}` renders them: URLs safe and tracked
    }


def render_payload(template: dict[str, Any] | None, ctx: RenderContext) -> dict[str, Any]:
    rendered = default_payload(ctx) if template is None else render_value(template, ctx)
    if ctx.auto_tracking and ctx.channel == "email":
        rendered = auto_track(rendered, ctx)
    assert isinstance(rendered, dict)
    return dict(rendered)
