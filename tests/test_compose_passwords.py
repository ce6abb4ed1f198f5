"""docker-compose.yml holds no database password: each comes from a required variable (there is no
Docker engine in CI, so the file is checked by reading it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # installed with schemathesis (test extra)

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?[^}]+\}$")


def _environments(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    envs = {name: svc.get("environment") or {} for name, svc in compose["services"].items()}
    envs["x-rejoin-env"] = compose["x-rejoin-env"]
    return envs


def test_database_passwords_are_required_variables_not_literals() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    envs = _environments(compose)
    secrets = {(svc, k): v for svc, env in envs.items() for k, v in env.items() if re.search("PASSWORD|PWD", k)}
    assert ("postgresql", "POSTGRES_PASSWORD") in secrets and ("temporal", "POSTGRES_PWD") in secrets
    for place, value in secrets.items():
        assert REQUIRED.match(str(value)), (place, value)
    assert REQUIRED.match(envs["postgresql"]["POSTGRES_PASSWORD"])["name"] == "POSTGRES_PASSWORD"  # type: ignore[index]
    assert REQUIRED.match(envs["temporal"]["POSTGRES_PWD"])["name"] == "POSTGRES_PASSWORD"  # type: ignore[index]
    url = compose["x-rejoin-env"]["REJOIN_DATABASE_URL"]
    password = re.fullmatch(r"postgresql://rejoin:(?P<pw>.+)@postgresql:5432/rejoin", url)
    assert password is not None and REQUIRED.match(password["pw"]), url
    assert REQUIRED.match(password["pw"])["name"] == "REJOIN_DB_PASSWORD"  # type: ignore[index]


def test_rejoins_database_user_gets_its_password_after_it_is_created() -> None:
    """The init script setting REJOIN_DB_PASSWORD runs after deploy/postgres-init.sql creates the user."""
    compose = yaml.safe_load(COMPOSE.read_text())
    postgres = compose["services"]["postgresql"]
    init = [v.split(":")[1] for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    init += [c["target"] for c in postgres["configs"]]
    assert init == sorted(init) and init[0].endswith("10-rejoin.sql") and init[1].endswith("20-rejoin-password.sql")
    script = compose["configs"][postgres["configs"][0]["source"]]["content"]
    assert "\\getenv rejoin_password REJOIN_DB_PASSWORD" in script and ":'rejoin_password'" in script
    assert "CREATE USER rejoin" in (COMPOSE.parent / "deploy/postgres-init.sql").read_text()
