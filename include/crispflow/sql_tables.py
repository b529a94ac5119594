"""One SQL table of crispflow's own (the promotion and erasure ledgers) on a SQLAlchemy URL: SQLite locally,
PostgreSQL in production."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def open_table(url: str, make_table: Callable[[Any], Any], *, read_only: bool = False) -> tuple[Engine, Any]:
    """(engine, table) for `url`; the table (`make_table(metadata)`) is created unless `read_only`, also when
    another process creates it at the same moment."""
    from sqlalchemy import MetaData, create_engine
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if url.startswith("sqlite:///") and not read_only:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    metadata = MetaData()
    table = make_table(metadata)
    if not read_only:
        try:
            metadata.create_all(engine)
        except (OperationalError, ProgrammingError):  # created concurrently by another process
            metadata.create_all(engine)
    return engine, table
