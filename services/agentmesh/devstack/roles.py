"""The PostgreSQL roles the services log in as, for the embedded server (dev and tests).

The migrations create one NOLOGIN group role per service schema (``agentmesh_memory_rw``
...: read and write that schema's tables, no DDL; docs/adr/0018). A service logs in
as a LOGIN role that is a member of its group and nothing else. In production the
operator creates those login roles, with passwords (docs/operations.md); here the dev
stack and the test fixtures create them without one, since the embedded server trusts
its unix socket. Migrations keep running as the owner (the embedded server's
superuser ``postgres``).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from agentmesh.devstack.postgres import EmbeddedPostgres

LOGIN_ROLES: Final = {
    "memory": "agentmesh_memory",
    "job": "agentmesh_job",
    "conductor": "agentmesh_conductor",
}
"""Service → the LOGIN role it connects as. Only services with a database have one:
Agent keeps no state."""

GROUP_ROLES: Final = {
    "memory": "agentmesh_memory_rw",
    "job": "agentmesh_job_rw",
    "conductor": "agentmesh_conductor_rw",
}
"""Service → the group role the migrations create for its schema."""


def create_login_roles(postgres: EmbeddedPostgres) -> None:
    """Create (or re-grant) each service's LOGIN role, without a password, after the
    migrations ran. Idempotent; a role that exists keeps its attributes but is made
    a member of its group again (rolling the migrations back can drop the group)."""
    for service, login in LOGIN_ROLES.items():
        group = GROUP_ROLES[service]
        # Names are the constants above: safe to interpolate.
        postgres.psql(
            "DO $$ BEGIN"
            f" IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN"
            f" CREATE ROLE {login} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT;"
            " END IF; END $$;"
            f" GRANT {group} TO {login}"
        )


def service_url(postgres: EmbeddedPostgres, service: str, database: str | None = None) -> str:
    """libpq/asyncpg URL of ``database`` (default: the application database) as
    ``service``'s LOGIN role, over the unix socket."""
    login = LOGIN_ROLES[service]
    name = database or postgres.database
    return f"postgresql://{login}@/{name}?host={quote(str(postgres.socket_dir))}"
