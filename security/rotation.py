"""Key rotation: re-encrypt every stored secret under the newest configured key.

Procedure: prepend a new key to REJOIN_SECRET_KEY (`new,old`), restart, run `rejoin
rotate-secrets` (or POST /api/v1/admin/rotate-secrets), then drop the old key.
"""

from __future__ import annotations

from sqlmodel import select

from security.crypto import SecretBox
from store.engine import Store
from store.tables import Integration, OptIn


def rotate_all(store: Store, box: SecretBox, batch: int = 500) -> dict[str, int]:
    """Re-encrypt integration secrets and stored identifiers; returns counts per table."""
    counts = {"integrations": 0, "identifiers": 0}
    with store.session() as s:
        for row in s.exec(select(Integration).where(Integration.secrets_enc.is_not(None))).all():  # type: ignore[union-attr]
            assert row.secrets_enc is not None
            row.secrets_enc = box.rotate(row.secrets_enc)
            s.add(row)
            counts["integrations"] += 1
    last_id = 0
    while True:  # identifiers can be many: batches, one transaction each
        with store.session() as s:
            rows = s.exec(select(OptIn).where(OptIn.id > last_id).order_by(OptIn.id).limit(batch)).all()  # type: ignore[arg-type,operator]
            if not rows:
                break
            for opt in rows:
                opt.value_enc = box.rotate(opt.value_enc)
                s.add(opt)
                last_id = opt.id  # type: ignore[assignment]
            counts["identifiers"] += len(rows)
    return counts
