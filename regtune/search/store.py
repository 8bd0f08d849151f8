"""Where a study's records live and how they are opened safely: the MLflow SQLite URI of
a path, an MlflowClient whose local store is created under a file lock, the lock itself,
whether stdout is a terminal, and the command that browses a store."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock (fcntl) held for the block; other processes wait."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient whose store exists. A local SQLite store is created (schema and
    migrations) under a file lock next to it: two studies started at once in a fresh
    folder would otherwise race on the schema (``duplicate column name``)."""
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    db = Path(uri[len("sqlite:///"):])
    with file_lock(db.with_name(db.name + ".lock")):  # MlflowClient creates (and migrates) the store in its constructor
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


def is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def open_ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


__all__ = ["sqlite_uri", "file_lock", "open_client", "is_tty", "open_ui_command"]
