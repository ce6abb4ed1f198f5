"""Experience API request bodies (`/v2/collect/user/*`) and their normalised events.

The wire shapes follow the public Experience API so an existing backend can point at Rejoin
unchanged: `{"user": {...}, "session": {...}, "context": {...}, "events": [...]}`, each event
`{"name": ..., "properties": {"dyType": ..., ...}}`. Standard `dyType` schemas are validated
here, with errors naming the field (`events.0.properties.cart`); custom events (no `dyType`)
accept any properties.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Re-exported (the "as" form tells mypy so): callers import the identifier hashes from here too.
from domain.field_error import FieldError
from domain.hashing import email_hash as email_hash
from domain.hashing import phone_hash as phone_hash
from domain.hashing import push_token_hash
from domain.hashing import sha256_hex as sha256_hex
from domain.identifiers import check_web_push_subscription, normalize_phone


class EventKind(StrEnum):
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    SYNC_CART = "sync_cart"
    PURCHASE = "purchase"
    IDENTIFY = "identify"
    PRODUCT_VIEW = "product_view"
    PAGE_VIEW = "page_view"
    MESSAGE_OPTIN = "message_optin"
    MESSAGE_OPTOUT = "message_optout"
    OTHER_STANDARD = "other_standard"
    CUSTOM = "custom"


CART_KINDS = frozenset({EventKind.ADD_TO_CART, EventKind.REMOVE_FROM_CART, EventKind.SYNC_CART})
IDENTIFY_TYPES = {"login-v1", "signup-v1", "newsletter-subscription-v1", "identify-v1"}
_KIND_BY_TYPE = {
    "add-to-cart-v1": EventKind.ADD_TO_CART,
    "remove-from-cart-v1": EventKind.REMOVE_FROM_CART,
    "sync-cart-v1": EventKind.SYNC_CART,
    "purchase-v1": EventKind.PURCHASE,
    "message-optin-v1": EventKind.MESSAGE_OPTIN,
    "message-optout-v1": EventKind.MESSAGE_OPTOUT,
    **{t: EventKind.IDENTIFY for t in IDENTIFY_TYPES},
}
KNOWN_TYPES = set(_KIND_BY_TYPE) | {
    "add-to-wishlist-v1", "keyword-search-v1", "change-attr-v1", "filter-items-v1", "sort-items-v1",
    "enter-promo-code-v1", "video-watch-v1", "inform-affinity-v1",
}  # fmt: skip


# ---------------------------------------------------------------- wire models


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


MAX_AMOUNT = 1e24  # the largest event value accepted (revenue)
# Which identifiers are emails and phones: ONE rule for what identifies the user (`_primary`,
# `_secondary`) and what the stored event keeps hashed (`_kept_properties`), so a stored event never
# claims an identity its user was not linked by. A cuidType is compared lower-cased
# (`_plain_email_cuid`); a secondary identifier's type by `identifier_kind` (separators dropped too).
_PLAIN_EMAIL = frozenset({"email", "plaintextemail"})  # cuidTypes naming a plain email, hashed on arrival
_HASHED_EMAIL = frozenset({"he", "hashedemail"})  # cuidTypes naming an email's SHA-256
_PHONE = frozenset({"phonenumber"})  # secondary identifier kinds naming a plain phone (E.164)
_HASHED_PHONE = frozenset({"hashedphonenumber"})
_HASHED_TYPES = _HASHED_EMAIL | _HASHED_PHONE  # secondary identifier types holding a SHA-256
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_SKU_MAX = 256  # as a cart item's productId
_KIND_SEPARATORS = re.compile(r"[\s_-]+")  # dropped from a secondary identifier's type (`identifier_kind`)


def _is_integer(value: Any) -> bool:
    """A JSON integer (`12345`); not a boolean, which Python counts as one."""
    return isinstance(value, int) and not isinstance(value, bool)


def _integer_as_text(value: Any) -> Any:
    """An id sent as a JSON integer (a shop's numeric SKUs, order numbers and customer ids:
    `"productId": 12345`) as its decimal string, which every check of the field then applies to
    (lengths, blanks, `/`); the Experience API documents strings, and refusing a number refused the
    whole batch. A number with a fraction or an exponent (`1.5`, `1e3`) is no id: refused saying so.
    Anything else is left to the field's own check (a boolean, an object: not a valid string)."""
    if _is_integer(value):
        return str(value)
    if isinstance(value, float):
        raise ValueError("must be a string, or an integer (12345): a number with a decimal point or exponent is no id")
    return value


def _text_only(value: Any) -> Any:
    """A device id (`dyid`, `dyid_server`, `id`) sent as a number: refused saying to send it as a
    string. Not converted as other ids are (`_integer_as_text`): a dyid is a 19-digit number, which a
    backend's JSON library may already have rounded (beyond 2^53), and a rounded dyid is silently
    another browser."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            'must be sent as a JSON string ("-4350463893986789401"), not a number: long numbers lose precision'
        )
    return value


def _null_as_empty_list(value: Any) -> Any:
    """An optional list sent as `null`: the same as omitted (an empty one). Backends serialising an
    unset field write `null` (`"secondaryIdentifiers": null`); refusing it refused the whole batch,
    while omitting the field was accepted."""
    return [] if value is None else value


def _null_as_empty_dict(value: Any) -> Any:
    """An optional object sent as `null` (a custom event's `"properties": null`): as omitted."""
    return {} if value is None else value


# Each is the last of its field's `Annotated` metadata, so it runs first and the field's own
# constraints stay on the string or list they check (their messages say "String should have at
# most 256 characters", not a generic length). The schema keeps documenting a string (a list).
AS_TEXT = BeforeValidator(_integer_as_text)  # an id: a string, or a JSON integer (converted)
TEXT_ONLY = BeforeValidator(_text_only)  # a device id: a string, never a number
NULL_AS_LIST = BeforeValidator(_null_as_empty_list)
NULL_AS_DICT = BeforeValidator(_null_as_empty_dict)


def _sha256_digest(value: str) -> str:
    """A hashed identifier in lower case; `ValueError` unless it is a SHA-256 hex digest. Anything
    else is a plain email or phone sent by mistake: kept, it would be PII in clear and match no opt-in."""
    if not _SHA256_HEX.match(value):
        raise ValueError("must be a SHA-256 hex digest (64 hex characters)")
    return value.lower()


class UserIn(_Open):
    dyid: Annotated[str, Field(max_length=128), TEXT_ONLY] | None = None
    dyid_server: Annotated[str, Field(max_length=128), TEXT_ONLY] | None = None
    # "Your own user ID" (dy-api): a device-level id as a dyid is, not a person; a known customer is
    # reached by `cuid` (docs/api.md, "Ingestion").
    id: Annotated[str, Field(max_length=256), TEXT_ONLY] | None = None
    active_consent_accepted: Any = None
    cuid: Annotated[str, Field(max_length=256), AS_TEXT] | None = None
    cuidType: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _device_ids_have_no_slash(self) -> UserIn:
        # A device id is a user's reference in the management API's paths (`/users/{ref}`: lookup,
        # erasure), where a `/` can never be matched: such a user could never be erased by it.
        for name in ("dyid", "dyid_server", "id"):
            value = getattr(self, name)
            if value is not None and "/" in value:
                raise FieldError(name, f"user.{name} must not contain '/'")
        return self

    @model_validator(mode="after")
    def _kept_cuid_has_no_slash(self) -> UserIn:
        # As for an identification event's cuid; a plain email is only ever kept as its hash.
        if self.cuid and "/" in self.cuid and not _plain_email_cuid(self.cuidType):
            raise ValueError("user.cuid must not contain '/'")
        return self

    @model_validator(mode="after")
    def _hashed_cuid_is_a_digest(self) -> UserIn:
        # FieldError: the 422 names `user.cuid`, not the whole `user`.
        if self.cuid and (self.cuidType or "").lower() in _HASHED_EMAIL and not _SHA256_HEX.match(self.cuid):
            raise FieldError("cuid", "a cuid of cuidType he must be a SHA-256 hex digest (64 hex characters)")
        return self

    @property
    def consented(self) -> bool:
        """Only a literal true is consent; missing or invalid values are not (seeds, dy-api §2)."""
        return self.active_consent_accepted is True

    @property
    def withdraws_consent(self) -> bool:
        """Only a literal false withdraws consent (ends running journeys): a request merely missing
        the flag, or sending an invalid value, is "not consented" but says nothing new."""
        return self.active_consent_accepted is False

    @property
    def device_key(self) -> str | None:
        return self.dyid or self.dyid_server or self.id

    @property
    def differing_device_keys(self) -> tuple[str, str] | None:
        """`(dyid_server, dyid)` when both are given and differ: the script cookie was reset (Safari caps
        script cookies at 7 days) while the server-set copy kept the old value. Both name one browser:
        ingestion resolves the request by either, the durable server cookie's first
        (`store.users.resolve_linked_devices`). None in the usual case (equal, or one given)."""
        if self.dyid and self.dyid_server and self.dyid_server != self.dyid:
            return self.dyid_server, self.dyid
        return None


class PageIn(_Open):
    type: Literal["HOMEPAGE", "CATEGORY", "PRODUCT", "CART", "OTHER"] | None = None
    data: Annotated[list[Annotated[str, AS_TEXT]], Field(max_length=100), NULL_AS_LIST] = Field(default_factory=list)
    location: str | None = Field(None, max_length=4096)
    referrer: str | None = Field(None, max_length=4096)
    locale: str | None = Field(None, max_length=32)


class ContextIn(_Open):
    page: PageIn | None = None


class EventIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=200)
    properties: Annotated[dict[str, Any], NULL_AS_DICT] = Field(default_factory=dict)


class CollectBase(_Open):
    user: UserIn
    session: dict[str, Any] | None = None
    sessionId: str | None = Field(None, max_length=256)
    context: ContextIn | None = None

    @model_validator(mode="after")
    def _user_identified(self) -> CollectBase:
        if not self.user.device_key and not self.user.cuid:
            raise FieldError("user", "one of dyid, dyid_server, id or cuid is required")
        return self


class EventRequest(CollectBase):
    events: list[EventIn] = Field(min_length=1, max_length=100)


class PageviewRequest(CollectBase):
    context: ContextIn

    @field_validator("context")
    @classmethod
    def _has_page(cls, v: ContextIn) -> ContextIn:
        if v.page is None or v.page.type is None:
            raise ValueError("context.page.type is required for a pageview")
        return v


# ---------------------------------------------------------------- standard schemas


def _not_blank(sku: str) -> str:
    # "   " would be an item no catalog row or condition can ever name, yet it fills the cart.
    if not sku.strip():
        raise ValueError("a productId may not be blank")
    return sku


Sku = Annotated[str, Field(min_length=1, max_length=_SKU_MAX), AfterValidator(_not_blank), AS_TEXT]


class CartItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    productId: Sku
    quantity: float = Field(1, ge=0)
    itemPrice: float | None = Field(None, ge=0)
    size: str | None = None

    @property
    def sku(self) -> str:
        return self.productId


class CartLine(CartItem):
    """A cart line as an event sends it: amounts bounded as an event's value is (MAX_AMOUNT), so a
    line's price times its quantity and the sums a cart's value or a message adds up stay finite.
    Stored carts are read back as `CartItem`, unbounded: a quantity add-to-carts summed past the
    bound, or a line stored before it, must not make every later event of the user fail."""

    quantity: float = Field(1, ge=0, le=MAX_AMOUNT)
    itemPrice: float | None = Field(None, ge=0, le=MAX_AMOUNT)


class _CartProps(BaseModel):
    model_config = ConfigDict(extra="allow")

    dyType: str
    # Bounded so that no sum or square a report takes of purchase values can overflow (a float
    # beyond 1.8e308 is inf, which JSON cannot carry); a trillion trillions of any currency is none.
    value: float = Field(ge=0, le=MAX_AMOUNT)
    currency: str | None = Field(None, max_length=8)
    cart: list[CartLine] | None = Field(None, max_length=1000)


class _ItemCartProps(_CartProps):
    productId: Sku
    quantity: float = Field(ge=0, le=MAX_AMOUNT)


class _SyncCartProps(_CartProps):
    cart: list[CartLine] = Field(max_length=1000)


class _PurchaseProps(_SyncCartProps):
    uniqueTransactionId: Annotated[str, Field(max_length=64), AS_TEXT] | None = None


def _plain_email_cuid(cuid_type: str | None) -> bool:
    """Whether a cuidType names a plain email (hashed on arrival): `email` or `plainTextEmail`, any
    case, nothing else. Deliberately not `identifier_kind`: a CUID of another spelling (`e-mail`) was
    always kept as sent and is the user's stored CUID; hashing it now would make the same login
    another person (docs/security.md, "Raw event retention")."""
    return (cuid_type or "").lower() in _PLAIN_EMAIL


def identifier_kind(given: str) -> str:
    """A secondary identifier's type as compared: lower case without spaces, dashes or underscores,
    so `phoneNumber`, `phone number` (one doc's spelling) and `phone_number` are one type."""
    return _KIND_SEPARATORS.sub("", given.lower())


class Identifier(BaseModel):
    type: str = Field(min_length=1, max_length=64)
    value: str = Field(min_length=1, max_length=512)

    @field_validator("value")
    @classmethod
    def _phone_in_e164(cls, v: str, info: ValidationInfo) -> str:
        # Normalised here, not only hashed: the hash must equal the opt-in API's for the same phone.
        # A hashed one must be a digest (lower-cased): a plain phone or email here is PII in clear.
        given = info.data.get("type")
        kind = identifier_kind(given) if isinstance(given, str) else None
        if kind in _HASHED_TYPES:
            return _sha256_digest(v)
        return normalize_phone(v) if kind in _PHONE else v


class _IdentifyProps(BaseModel):
    model_config = ConfigDict(extra="allow")

    dyType: str
    cuid: Annotated[str, Field(min_length=1, max_length=256), AS_TEXT] | None = None
    cuidType: str | None = Field(None, max_length=64)
    hashedEmail: str | None = Field(None, min_length=1, max_length=128)
    secondaryIdentifiers: Annotated[list[Identifier], Field(max_length=20), NULL_AS_LIST] = Field(default_factory=list)
    phoneNumber: str | None = Field(None, max_length=32)

    @field_validator("cuid")
    @classmethod
    def _no_slash(cls, v: str | None) -> str | None:
        if v is not None and "/" in v:
            raise ValueError("cuid must not contain '/'")
        return v

    @field_validator("phoneNumber")
    @classmethod
    def _phone_in_e164(cls, v: str | None) -> str | None:
        return normalize_phone(v) if v is not None else None

    @field_validator("hashedEmail")
    @classmethod
    def _hashed_email_is_a_digest(cls, v: str | None) -> str | None:
        return _sha256_digest(v) if v is not None else None


class _PushOptProps(BaseModel):
    model_config = ConfigDict(extra="allow")

    dyType: str
    pushID: str | None = Field(None, min_length=1, max_length=4096)
    pushId: str | None = Field(None, min_length=1, max_length=4096)
    channelType: Literal["APP_PUSH", "WEB_PUSH"] | None = None

    @model_validator(mode="after")
    def _token(self) -> _PushOptProps:
        if not (self.pushID or self.pushId):
            raise ValueError("pushID is required")
        return self


_SCHEMAS: dict[str, type[BaseModel]] = {
    "add-to-cart-v1": _ItemCartProps,
    "remove-from-cart-v1": _ItemCartProps,
    "sync-cart-v1": _SyncCartProps,
    "purchase-v1": _PurchaseProps,
    "message-optin-v1": _PushOptProps,
    "message-optout-v1": _PushOptProps,
    **{t: _IdentifyProps for t in IDENTIFY_TYPES},
}


# ---------------------------------------------------------------- normalised events


class Identity(BaseModel):
    """Identifiers carried by an identification event, hashed: no raw email or phone is kept."""

    cuid: str
    cuid_type: str
    email_hash: str | None = None
    phone_hash: str | None = None


class NormalizedEvent(BaseModel):
    """One event as the engine sees it, whatever wire shape it came in."""

    kind: EventKind
    name: str
    dy_type: str | None = None
    # As stored (`Event.data`): emails, phones and push tokens hashed (`_kept_properties`).
    properties: dict[str, Any] = Field(default_factory=dict)
    cart: list[CartItem] | None = None  # the cart as it is after this event, when the event says
    sku: str | None = None  # the product of a product view / add-to-cart
    # The products a custom (or other standard) event names, as standard events name them: a
    # `productId`, a `cart` list of `{"productId": ...}` lines. A custom trigger's products.
    items: list[CartItem] | None = None
    value: float | None = None
    transaction_id: str | None = None
    identity: Identity | None = None
    # (kind, hash) of the phone and email an identification event without a CUID brings (a
    # newsletter subscription by phone only): linked to the request's user, since a secondary
    # identifier sticks to the user once reported (dy-api.md §3), so a later opt-in reaches them.
    identifiers: list[tuple[str, str]] | None = None
    push_token: str | None = None
    push_channel: str | None = None
    # The properties as the backend sent them, when storing changed them (`_kept_properties`):
    # in memory only (a private attribute is neither dumped into the stored event nor read back),
    # for the triggers' and exits' conditions, which read what was sent (docs/campaigns.md).
    _sent: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def sent_properties(self) -> dict[str, Any]:
        """The properties as sent: what a trigger's or exit's conditions read. An event read back
        from the store has only its kept `properties` (hashes), and matches on those."""
        return self._sent if self._sent is not None else self.properties


class EventValidationError(FieldError):
    """A standard event whose properties break its schema; `place` names the field in the body.

    `also` holds the field errors found beside this one (the event's other fields, a batch's other
    events): the API reports them all (api/errors.py), not just the first."""

    def __init__(self, place: str, message: str, *, also: Sequence[FieldError] = ()) -> None:
        super().__init__(place, message)
        self.also = list(also)

    @classmethod
    def of(cls, errors: Sequence[FieldError]) -> EventValidationError:
        """One error standing for all of `errors` (at least one), the first leading."""
        first, *rest = errors
        return cls(first.place, first.message, also=rest)

    def errors(self) -> list[FieldError]:
        """This error and every one found beside it, in order."""
        return [self, *self.also]


def _primary(cuid: str | None, cuid_type: str | None, hashed_email: str | None) -> tuple[str | None, str, str | None]:
    """(CUID, its type, email hash) named by a cuid/cuidType/hashedEmail: one rule for an
    identification event's properties and for the request's `user.cuid`/`cuidType`."""
    email_h = hashed_email.lower() if hashed_email else None
    kind = cuid_type or "id"
    if cuid and _plain_email_cuid(kind):
        # A plain email as CUID is accepted for convenience but kept only as its hash.
        email_h, cuid, kind = email_hash(cuid), None, "he"
    if cuid and kind.lower() in _HASHED_EMAIL:
        # A hex digest in capitals is the same hash: one CUID for the person, however it is written.
        cuid = email_h = cuid.lower()
        kind = "he"
    if not cuid and email_h:
        cuid, kind = email_h, "he"
    return cuid, kind, email_h


def user_identity(user: UserIn) -> Identity | None:
    """The identification a request's `user.cuid` + `cuidType` makes (None without a cuid), hashed
    exactly as an identification event's cuid is, so the same person gets the same CUID either way."""
    cuid, cuid_type, email_h = _primary(user.cuid, user.cuidType, None)
    return Identity(cuid=cuid, cuid_type=cuid_type, email_hash=email_h) if cuid else None


def _identity(p: _IdentifyProps) -> Identity | None:
    cuid, cuid_type, email_h = _primary(p.cuid, p.cuidType, p.hashedEmail)
    if not cuid:
        return None
    email_h, phone_h = _secondary(p, email_h)
    return Identity(cuid=cuid, cuid_type=cuid_type, email_hash=email_h, phone_hash=phone_h)


def _identifiers_without_cuid(p: _IdentifyProps) -> list[tuple[str, str]] | None:
    """The (kind, hash) identifiers of an identification event that names no CUID (`_identity` is
    None): its phone (`phoneNumber`, or a secondary one) and secondary email; None when it has none."""
    email_h, phone_h = _secondary(p, None)
    found = [(kind, h) for kind, h in (("email", email_h), ("phone", phone_h)) if h]
    return found or None


def _secondary(p: _IdentifyProps, email_h: str | None) -> tuple[str | None, str | None]:
    """(email hash, phone hash) of an identification event: `email_h` (the primary one) unless
    none, then a secondary email; the phone of `phoneNumber` or of a secondary identifier."""
    phone_h = phone_hash(p.phoneNumber) if p.phoneNumber else None
    for ident in p.secondaryIdentifiers:
        kind = identifier_kind(ident.type)
        if kind in _PHONE:
            phone_h = phone_hash(ident.value)
        elif kind in _HASHED_PHONE:
            phone_h = ident.value.lower()
        # A secondary email only stands in when the event names no primary one: the primary hashed
        # email is the person's email identity (the one opted in); overwriting it skipped their sends.
        elif kind in _PLAIN_EMAIL:
            email_h = email_h or email_hash(ident.value)
        elif kind in _HASHED_EMAIL:
            email_h = email_h or ident.value.lower()
    return email_h, phone_h


def _check_hashed_cuid(index: int, props: _IdentifyProps) -> None:
    """A cuid declared a hashed email must be one, as `hashedEmail` must (checked here, after the
    schema: the rule reads two fields and the 422 must name `cuid`)."""
    if props.cuid and (props.cuidType or "").lower() in _HASHED_EMAIL and not _SHA256_HEX.match(props.cuid):
        raise EventValidationError(
            f"events.{index}.properties.cuid", "a cuid of cuidType he must be a SHA-256 hex digest (64 hex characters)"
        )


def _check_push_opt_in(index: int, dy_type: str, props: _PushOptProps, allow_http_push: bool) -> None:
    """A Web Push opt-in must carry a subscription a send can use; refused now, not at every send.
    Opt-outs are not checked: one naming a value stored before this check must still work."""
    if dy_type != "message-optin-v1" or props.channelType != "WEB_PUSH":
        return
    field, token = ("pushID", props.pushID) if props.pushID else ("pushId", props.pushId)
    try:
        check_web_push_subscription(token or "", allow_http=allow_http_push)
    except ValueError as exc:
        raise EventValidationError(f"events.{index}.properties.{field}", str(exc)) from None


def named_products(properties: dict[str, Any]) -> list[CartItem] | None:
    """The products an event without a cart schema names, in the standard events' shapes: a
    `productId` (as add-to-cart-v1 and add-to-wishlist-v1 carry it) and the lines of a `cart` list
    (as purchase-v1 does). Custom events accept any properties, so anything else (a `cart` that is
    not a list, a line without a usable `productId`) is no product, never a 422. None: no product."""
    found: list[CartItem] = []
    single = properties.get("productId")
    if isinstance(single, str) or _is_integer(single):  # a numeric SKU, as the standard events take it
        found += _valid_lines([{"productId": single}])
    lines = properties.get("cart")
    if isinstance(lines, list):
        found += _valid_lines(lines[:1000])
    return found or None


def _valid_lines(lines: list[Any]) -> list[CartItem]:
    out: list[CartItem] = []
    for line in lines:
        try:
            out.append(CartItem.model_validate(line))
        except ValidationError:
            continue  # not a product line: a custom property that happens to be called so
    return out


def unknown_dy_type(event: EventIn) -> tuple[str, str | None] | None:
    """An event's `dyType` when it is a string naming no standard schema, with the known type it
    most likely meant (the same but for case, or a close spelling) or None; None when it is known
    or absent. Such an event is stored as a custom event (the Experience API's types may grow),
    but a migrating backend's typo (`Add-To-Cart-v1`) must not silently lose cart abandonment:
    the 202 warns (`UNKNOWN_DYTYPE`, api/routes/collect.py)."""
    dy_type = event.properties.get("dyType")
    if not isinstance(dy_type, str) or dy_type in KNOWN_TYPES:
        return None
    folded = dy_type.strip().lower()
    if folded in KNOWN_TYPES:
        return dy_type, folded
    close = difflib.get_close_matches(folded, sorted(KNOWN_TYPES), n=1, cutoff=0.8)
    return dy_type, close[0] if close else None


def odd_currency(event: EventIn) -> str | None:
    """An event's `currency` when it is not an ISO 4217 code (three letters, any case: `"€"`,
    `"EURO"`); None when it is one or absent. Stored as given (a report keeps each currency apart,
    docs/reports.md), but its revenue then never adds up with the shop's: the 202 warns
    (`CURRENCY_NOT_ISO_4217`, api/routes/collect.py)."""
    currency = event.properties.get("currency")
    if not isinstance(currency, str) or re.fullmatch(r"[A-Za-z]{3}", currency.strip()):
        return None
    return currency


def normalize_event(index: int, event: EventIn, *, allow_http_push: bool = False) -> NormalizedEvent:
    """Validate one `events[index]` entry against its standard schema and normalise it.

    `allow_http_push` admits Web Push subscriptions with an http endpoint (private URLs allowed:
    local development and tests); real push services are https."""
    dy_type = event.properties.get("dyType")
    if dy_type is None:
        return NormalizedEvent(
            kind=EventKind.CUSTOM, name=event.name, properties=dict(event.properties),
            items=named_products(event.properties),
        )  # fmt: skip
    if not isinstance(dy_type, str):
        raise EventValidationError(f"events.{index}.properties.dyType", "must be a string")
    schema = _SCHEMAS.get(dy_type)
    if schema is None:
        kind = EventKind.OTHER_STANDARD if dy_type in KNOWN_TYPES else EventKind.CUSTOM
        return NormalizedEvent(
            kind=kind, name=event.name, dy_type=dy_type, properties=dict(event.properties),
            items=named_products(event.properties),
        )  # fmt: skip
    try:
        props = schema.model_validate(event.properties)
    except ValidationError as exc:
        where = f"events.{index}.properties"
        found = [FieldError(".".join(str(p) for p in (where, *e["loc"])), e["msg"]) for e in exc.errors()]
        raise EventValidationError.of(found) from None  # every field at fault, not only the first
    kind = _KIND_BY_TYPE[dy_type]
    kept = _kept_properties(event, props)
    base = NormalizedEvent(kind=kind, name=event.name, dy_type=dy_type, properties=kept)
    if kept != event.properties:
        base._sent = dict(event.properties)  # conditions read what was sent; the row keeps hashes
    if isinstance(props, _CartProps):
        base.cart = list[CartItem](props.cart) if props.cart is not None else None
        base.value = props.value
        if isinstance(props, _ItemCartProps):
            base.sku = props.productId
        if isinstance(props, _PurchaseProps):
            base.transaction_id = props.uniqueTransactionId
    elif isinstance(props, _IdentifyProps):
        _check_hashed_cuid(index, props)
        base.identity = _identity(props)
        if base.identity is None and dy_type in {"login-v1", "identify-v1"}:
            raise EventValidationError(f"events.{index}.properties.cuid", "a cuid or hashedEmail is required")
        if base.identity is None:
            base.identifiers = _identifiers_without_cuid(props)
    elif isinstance(props, _PushOptProps):
        _check_push_opt_in(index, dy_type, props, allow_http_push)
        base.push_token = props.pushID or props.pushId
        base.push_channel = props.channelType
    return base


def _kept_properties(event: EventIn, props: BaseModel) -> dict[str, Any]:
    """A standard event's properties as kept (the stored event's data, what triggers read): every
    email, phone number and push token the schema names replaced by the hash the identity and opt-in
    rows are keyed by, so no event row holds one in clear for its retention (docs/security.md).
    Types change with the values (`cuidType` email -> `he`, a secondary `email` -> `hashedEmail`,
    `phoneNumber` -> `hashedPhoneNumber`): normalised again, the properties name the same hashes.
    Only what the identity code takes for an email or phone (`_primary`, `_secondary`: the same sets)
    is hashed: a CUID of another type is the user's CUID as sent, and stays so here too.
    Triggers' conditions read the properties as sent (`NormalizedEvent.sent_properties`)."""
    kept = _ids_as_text(dict(event.properties))
    if isinstance(props, _IdentifyProps):
        if props.cuid and _plain_email_cuid(props.cuidType):
            kept["cuid"], kept["cuidType"] = email_hash(props.cuid), "he"
        if props.phoneNumber is not None:
            del kept["phoneNumber"]
            kept["hashedPhoneNumber"] = phone_hash(props.phoneNumber)
        if kept.get("secondaryIdentifiers") is not None:  # null: as omitted, kept as sent
            kept["secondaryIdentifiers"] = [_kept_identifier(i) for i in props.secondaryIdentifiers]
    elif isinstance(props, _PushOptProps):
        channel = "web_push" if props.channelType == "WEB_PUSH" else "app_push"  # as ingestion keys the opt-in
        for name in ("pushID", "pushId"):
            token = getattr(props, name)
            if token is not None:
                kept[name] = push_token_hash(channel, token)
    return kept


def _ids_as_text(kept: dict[str, Any]) -> dict[str, Any]:
    """A standard event's ids sent as JSON integers (`_integer_as_text`) as the strings they were
    read as: the stored event names product `"12345"` as the catalog, carts and reports do."""
    for name in ("productId", "uniqueTransactionId", "cuid"):
        if _is_integer(kept.get(name)):
            kept[name] = str(kept[name])
    lines = kept.get("cart")
    if isinstance(lines, list):
        kept["cart"] = [
            {**line, "productId": str(line["productId"])}
            if isinstance(line, dict) and _is_integer(line.get("productId")) else line
            for line in lines
        ]  # fmt: skip
    return kept


def _kept_identifier(ident: Identifier) -> dict[str, str]:
    """A secondary identifier as kept: an email or phone as its hash (`_kept_properties`)."""
    kind = identifier_kind(ident.type)
    if kind in _PLAIN_EMAIL:
        return {"type": "hashedEmail", "value": email_hash(ident.value)}
    if kind in _PHONE:
        return {"type": "hashedPhoneNumber", "value": phone_hash(ident.value)}
    return {"type": ident.type, "value": ident.value}


def pageview_event(req: PageviewRequest) -> NormalizedEvent:
    page = req.context.page
    assert page is not None  # validated
    if page.type == "PRODUCT":
        if not page.data:
            raise EventValidationError("context.page.data", "a PRODUCT page needs its SKU as data[0]")
        _check_page_sku(page.data[0])
        return NormalizedEvent(
            kind=EventKind.PRODUCT_VIEW,
            name="Product View",
            sku=page.data[0],
            properties={"location": page.location, "sku": page.data[0]},
        )
    return NormalizedEvent(
        kind=EventKind.PAGE_VIEW,
        name=f"{(page.type or 'OTHER').title()} View",
        properties={"type": page.type, "data": page.data, "location": page.location},
    )


def _check_page_sku(sku: str) -> None:
    # A blank SKU would start a browse journey for no product; the length is a cart productId's.
    if not sku.strip() or len(sku) > _SKU_MAX:
        raise EventValidationError("context.page.data.0", f"a SKU must be 1 to {_SKU_MAX} characters, not blank")
