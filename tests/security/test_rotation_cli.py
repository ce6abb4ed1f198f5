"""`rejoin rotate-secrets` with keys that cannot open the stored values: one clear line, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from security.crypto import SecretBox, UndecryptableSecret
from security.rotation import RotationIncomplete, rotate_all
from store.engine import Store
from store.tables import Integration, OptIn, Section, Send, now_utc

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW, OTHER = (Fernet.generate_key().decode() for _ in range(3))


def rejoin(data_dir: Path, *args: str, secret_key: str | None) -> subprocess.CompletedProcess[str]:
    """The `rejoin` command in its own process, on a data folder of its own (SQLite there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REJOIN_", "TEMPORAL_"))}
    env["REJOIN_DATA_DIR"] = str(data_dir)
    if secret_key is not None:
        env["REJOIN_SECRET_KEY"] = secret_key
    code = "from runtime.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def seeded(data_dir: Path, secrets_by_key: dict[str, str]) -> tuple[Store, list[str], list[int]]:
    """A store under `data_dir` with one integration secret and one opt-in per key of `secrets_by_key`."""
    data_dir.mkdir(exist_ok=True)
    store = Store(f"sqlite:///{data_dir / 'rejoin.db'}")
    integrations, opt_ins = [], []
    with store.session() as s:
        s.add(Section(id="sec_rot", name="Rotation", created_at=now_utc()))
        s.flush()
        for n, (key, plain) in enumerate(secrets_by_key.items()):
            box = SecretBox([key])
            row = Integration(id=f"int_rot{n}", section_id="sec_rot", channel=f"ch{n}", name="x", kind="outbox",
                              identifier_type="email", config={}, secrets_enc=box.encrypt(plain),
                              created_at=now_utc(), updated_at=now_utc())  # fmt: skip
            opt = OptIn(section_id="sec_rot", channel="email", identifier_type="email", value_hash=f"h{n}",
                        value_enc=box.encrypt(plain), opted_in=True, updated_at=now_utc())  # fmt: skip
            s.add(row)
            s.add(opt)
            s.flush()
            integrations.append(row.id)
            assert opt.id is not None
            opt_ins.append(opt.id)
    return store, integrations, opt_ins


def stored(store: Store) -> list[str]:
    with store.session() as s:
        rows = [r.secrets_enc or "" for r in s.query(Integration).order_by(Integration.id)]
        return rows + [o.value_enc for o in s.query(OptIn).order_by(OptIn.id)]  # type: ignore[arg-type]


def test_without_any_key_rotation_refuses_and_makes_no_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = rejoin(data, "rotate-secrets", secret_key=None)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"rejoin rotate-secrets: no REJOIN_SECRET_KEY and no key file ({data / 'secret.key'}): nothing to rotate"
    ]
    assert not (data / "secret.key").exists()


def test_with_the_old_key_missing_rotation_names_the_rows_changes_nothing_then_works(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store, integrations, opt_ins = seeded(data, {OLD: "pa55"})
    before = stored(store)

    done = rejoin(data, "rotate-secrets", secret_key=NEW)  # the operator forgot `,old`
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"integration secrets: {integrations[0]}" in lines[0] and f"opt-in ids): {opt_ins[0]}" in lines[0]
    assert "REJOIN_SECRET_KEY=new,old" in lines[0]
    assert stored(store) == before

    done = rejoin(data, "rotate-secrets", secret_key=f"{NEW},{OLD}")
    assert done.returncode == 0, done.stderr
    assert all(SecretBox([NEW]).decrypt(v) == "pa55" for v in stored(store))
    store.dispose()


def test_values_no_key_opens_are_named_and_the_rest_is_rotated(tmp_path: Path) -> None:
    store, integrations, opt_ins = seeded(tmp_path / "data", {OLD: "under-old", OTHER: "under-a-lost-key"})
    with pytest.raises(RotationIncomplete) as failed:
        rotate_all(store, SecretBox([NEW, OLD]))
    message = str(failed.value)
    assert f"integration secrets: {integrations[1]};" in message and f"opt-in ids): {opt_ins[1]};" in message
    assert integrations[0] not in message and "2 configured keys" in message
    old_int, other_int, old_opt, other_opt = stored(store)
    assert SecretBox([NEW]).decrypt(old_int) == SecretBox([NEW]).decrypt(old_opt) == "under-old"
    assert SecretBox([OTHER]).decrypt(other_int) == SecretBox([OTHER]).decrypt(other_opt) == "under-a-lost-key"
    store.dispose()


def test_a_value_no_key_opens_is_a_clear_error_not_invalid_token() -> None:
    """What an API process not restarted after a rotation meets: a ValueError that says what to do."""
    token = SecretBox([NEW]).encrypt("secret")
    for call in (SecretBox([OLD]).decrypt, SecretBox([OLD]).rotate):
        with pytest.raises(UndecryptableSecret, match="REJOIN_SECRET_KEY must list") as err:
            call(token)
        assert isinstance(err.value, ValueError) and not isinstance(err.value, InvalidToken)


def test_the_message_an_unfinished_send_keeps_for_its_retries_is_rotated(tmp_path: Path) -> None:
    """It holds an address and personal content, encrypted like an opt-in: rotation re-encrypts it
    (a send begun before rotation would otherwise retry with a value only the old key opens)."""
    store, _, _ = seeded(tmp_path / "data", {OLD: "pa55"})
    old_box = SecretBox([OLD])
    with store.session() as s:
        for n, message in enumerate([old_box.encrypt('{"recipient": "ann@example.com"}'), None]):
            s.add(Send(key=f"send_rot{n}", journey_id="j", section_id="sec_rot", campaign_id="c", variation_id="v",
                       step_index=0, channel="email", integration_id="int_rot0", user_id="u", status="in_flight",
                       message_enc=message, created_at=now_utc(), updated_at=now_utc()))  # fmt: skip

    counts = rotate_all(store, SecretBox([NEW, OLD]))

    assert counts["send_messages"] == 1, counts
    with store.session() as s:
        kept = s.get(Send, "send_rot0")
        assert kept is not None and kept.message_enc is not None
        assert SecretBox([NEW]).decrypt(kept.message_enc) == '{"recipient": "ann@example.com"}'
        final = s.get(Send, "send_rot1")
        assert final is not None and final.message_enc is None
