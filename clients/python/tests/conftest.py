"""Fixtures for tests against a real Sentinel server at SENTINEL_ADDR (see ../test.sh)."""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from sentinel_client import AsyncSentinel, Sentinel


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("SENTINEL_ADDR"):
        raise pytest.UsageError(
            "SENTINEL_ADDR is not set: these tests need a running Sentinel server; run "
            "`scripts/with-server.sh clients/python/test.sh` from the repository root"
        )


@pytest.fixture(scope="session")
def addr() -> str:
    return os.environ["SENTINEL_ADDR"]


def new_namespace() -> str:
    # Unique per test, so that suites sharing one server never see each other's records.
    return f"py-{uuid.uuid4().hex[:20]}"


def new_key(prefix: str = "k") -> str:
    return f"{prefix}:{uuid.uuid4().hex}"


@pytest.fixture
def namespace() -> str:
    return new_namespace()


@pytest.fixture
def make_client(addr: str) -> Iterator[Callable[..., Sentinel]]:
    made: list[Sentinel] = []

    def make(namespace: str | None = None, **kw: object) -> Sentinel:
        c = Sentinel(addr, namespace=namespace or new_namespace(), **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(make_client: Callable[..., Sentinel], namespace: str) -> Sentinel:
    return make_client(namespace)


@pytest_asyncio.fixture
async def aclient(addr: str, namespace: str) -> AsyncIterator[AsyncSentinel]:
    async with AsyncSentinel(addr, namespace=namespace) as c:
        yield c
