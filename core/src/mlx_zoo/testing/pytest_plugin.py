"""The ``mlx_zoo`` pytest plugin (entry point ``pytest11``), loaded by every pytest run in an
environment where mlx-zoo is installed: so it only declares fixtures and imports nothing but
``mlx_zoo`` itself -- no plugin, no transformers, no torch -- until a fixture is used.

Fixtures: ``isolated_registry`` (:func:`mlx_zoo.testing.isolated_registry`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# The kit's checks read better with pytest's assertion messages (modules not yet imported).
pytest.register_assert_rewrite("mlx_zoo.testing.conformance", "mlx_zoo.testing.helpers")


@pytest.fixture
def isolated_registry() -> Iterator[Any]:
    """A fresh plugin registry for the test (:func:`mlx_zoo.testing.isolated_registry`);
    the value is :mod:`mlx_zoo.registry`."""
    from mlx_zoo.testing.helpers import isolated_registry as isolated

    with isolated() as registry:
        yield registry
