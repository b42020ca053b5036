"""Fixtures of the unit tests that mock HTTP. Apart from tests/conftest.py, which the installed package's
autopkgtest loads too: that one runs without python3-responses."""

from __future__ import annotations

from typing import Iterator

import pytest
import responses


@pytest.fixture
def no_proxy_from_the_environment(monkeypatch) -> None:
    """Debian's package build sets http_proxy to a dead port (no network while building): the tests that mock HTTP
    set the proxy they mean themselves."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """HTTP mocked with responses (the unit tests of client.py and referrers.py)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
