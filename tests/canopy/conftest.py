"""Fixtures of the SDK tests: one ``basic`` chute instance process shared by a test module."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.instances import Instance, start_instance


@pytest.fixture(scope="module")
def basic_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    with start_instance("tests.canopy.chutes.basic:chute", tmp_path_factory.mktemp("basic")) as instance:
        yield instance
