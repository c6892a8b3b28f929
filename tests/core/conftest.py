"""Fixtures the core's tests share."""

from __future__ import annotations

import pytest

from ..support.search import tiny_setting


@pytest.fixture(scope="module")
def tiny():
    """The tiny search setting of :func:`tests.support.search.tiny_setting`, built once per module."""
    return tiny_setting()
