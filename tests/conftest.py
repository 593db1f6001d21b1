"""Fixtures every test module may take: the store databases (``tests.postgres``)."""

from tests.postgres import database_url, postgres_server, postgres_url  # noqa: F401
