"""Issue #11 finding 13: the values of a failing statement never reach a log (a failed insert of a signing key or a
password hash must not print it). The engine is `make_engine`'s, as every service builds it."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

SECRET = "-----BEGIN PRIVATE KEY----- MC4CAQAwBQYDK2VwBCIEIPrivateKeyMaterial"


async def test_a_failing_insert_logs_no_parameter_values(engine: AsyncEngine, caplog: pytest.LogCaptureFixture) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("CREATE TEMP TABLE secret_rows (kid text PRIMARY KEY, private_pem text)"))
        insert = text("INSERT INTO secret_rows (kid, private_pem) VALUES (:kid, :pem)")
        await connection.execute(insert, {"kid": "k1", "pem": "first"})
        with pytest.raises(DBAPIError) as failure:  # a duplicate kid: the insert fails with the key in its values
            await connection.execute(insert, {"kid": "k1", "pem": SECRET})
        await connection.rollback()
    error = failure.value
    # What the service's error handler logs for an unexpected database error: the exception with its traceback.
    logger = logging.getLogger("itsm_shared.errors")
    with caplog.at_level(logging.DEBUG):
        logger.exception("unhandled error", exc_info=error)
    logged = caplog.text
    assert "unhandled error" in logged and "secret_rows" in logged, "the statement itself is still logged"
    for where in (str(error), repr(error), logged):
        assert SECRET not in where and "MC4CAQAw" not in where
    assert "hidden" in str(error)  # SQLAlchemy says the parameters were withheld
