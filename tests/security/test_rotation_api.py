"""An API process without the key a stored secret needs (started before a rotation, or the old key
dropped too early) answers 503 saying what to do, not a bare 500: here, an update keeping a
masked secret, which must decrypt it."""

from __future__ import annotations

import httpx
from cryptography.fernet import Fernet
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from settings import Settings
from store.engine import Store
from tests.helpers import SectionKeys, add_integration


async def test_a_secret_no_listed_key_opens_is_a_503_naming_the_fix(
    api: httpx.AsyncClient, env: WorkflowEnvironment, settings: Settings, store: Store, section: SectionKeys
) -> None:
    config = {"url": "https://esp.example/send", "headers": [{"key": "X-Api-Key", "value": "k-1", "secret": True}]}
    integration = await add_integration(api, section, kind="custom_http", config=config)
    other_key = settings.model_copy(update={"secret_key": Fernet.generate_key().decode()})
    other_key.__dict__.pop("secret_keys", None)  # a cached property: model_copy carried the old keys over
    app = create_app(other_key, store=store, temporal=env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rejoin.test") as stale:
        masked = {**config, "headers": [{"key": "X-Api-Key", "value": "********", "secret": True}]}
        body = {"channel": "email", "name": "renamed", "kind": "custom_http", "identifier_type": "email",
                "config": masked}  # fmt: skip
        r = await stale.put(f"/api/v1/integrations/{integration['id']}", json=body, headers=section.mgmt)
    assert r.status_code == 503, r.text
    assert "REJOIN_SECRET_KEY" in r.json()["error"] and "k-1" not in r.text
