"""A store statement that fails raises an error whose text (what the API's and worker's logs print
with the traceback) names the statement, not the values it carried: those are people's addresses,
carts and the provider answers kept of their sends."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy.exc import IntegrityError

from store.engine import Store
from store.tables import Section, now_utc


def test_a_failed_insert_does_not_show_its_values(store: Store) -> None:
    marker = "jane.doe+" + secrets.token_hex(4) + "@example.com"  # stands for any personal value
    section_id = "sec_" + secrets.token_hex(6)
    with store.session() as s:
        s.add(Section(id=section_id, name=marker, created_at=now_utc()))
        s.commit()
    with pytest.raises(IntegrityError) as err, store.session() as s:
        s.add(Section(id=section_id, name=marker, created_at=now_utc()))  # the same primary key again
        s.commit()
    assert marker not in str(err.value) and "hidden due to hide_parameters" in str(err.value), str(err.value)
