"""An identity merge keeps the cart that changed last. The anonymous device's cart used to replace
the person's whenever it had items, so a person who carted more on another device after the device
carted anonymously lost that newer cart at the device's login (and their messages showed the stale
one). The device's cart still wins when it is the newer: that is the cart the person shops with now.
"""

from __future__ import annotations

import httpx
from sqlmodel import select

from store.cart_tables import CartEntry
from store.engine import Store
from tests.helpers import SectionKeys, add_to_cart, collect, login, new_dyid, purchase

EMAIL = "merge-cart@t.example"


async def _user(api: httpx.AsyncClient, sec: SectionKeys, ref: str) -> tuple[str, list[str]]:
    """The user's id and the SKUs of their cart, in order."""
    r = await api.get(f"/api/v1/users/{ref}", headers=sec.mgmt)
    assert r.status_code == 200, r.text
    body = r.json()
    return str(body["id"]), [str(i["productId"]) for i in body["cart"]]


def _indexed(store: Store, section_id: str) -> set[tuple[str, str]]:
    with store.session() as s:
        rows = s.exec(select(CartEntry).where(CartEntry.section_id == section_id)).all()
    return {(e.user_id, e.sku) for e in rows}


async def test_person_cart_newer_than_the_anonymous_one_is_kept(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    device, person_device = new_dyid(), new_dyid()
    await collect(api, section, device, add_to_cart("sku-1"))  # anonymous, older
    anonymous, _ = await _user(api, section, device)
    await collect(api, section, person_device, login(EMAIL), add_to_cart("sku-3", cart=[("sku-1", 10), ("sku-3", 5)]))
    person, cart = await _user(api, section, person_device)
    assert cart == ["sku-1", "sku-3"]

    await collect(api, section, device, login(EMAIL))  # merges the anonymous user into the person

    assert await _user(api, section, device) == (person, ["sku-1", "sku-3"])
    assert await _user(api, section, anonymous) == (person, ["sku-1", "sku-3"])
    assert _indexed(store, section.id) == {(person, "sku-1"), (person, "sku-3")}


async def test_anonymous_cart_newer_than_the_persons_wins(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    device, person_device = new_dyid(), new_dyid()
    await collect(api, section, person_device, login(EMAIL), add_to_cart("sku-3", cart=[("sku-1", 10), ("sku-3", 5)]))
    person, _ = await _user(api, section, person_device)
    await collect(api, section, device, add_to_cart("sku-2"))  # anonymous, newer

    await collect(api, section, device, login(EMAIL))

    assert await _user(api, section, person_device) == (person, ["sku-2"])
    assert _indexed(store, section.id) == {(person, "sku-2")}


async def test_purchase_after_the_anonymous_cart_leaves_the_person_cart_empty(
    api: httpx.AsyncClient, section: SectionKeys, store: Store
) -> None:
    """A purchase is a cart change too: the person bought after the device carted, so nothing is left."""
    device, person_device = new_dyid(), new_dyid()
    await collect(api, section, device, add_to_cart("sku-1"))
    await collect(api, section, person_device, login(EMAIL), add_to_cart("sku-1"))
    await collect(api, section, person_device, purchase([("sku-1", 10)]))
    person, _ = await _user(api, section, person_device)

    await collect(api, section, device, login(EMAIL))

    assert await _user(api, section, device) == (person, [])
    assert _indexed(store, section.id) == set()
