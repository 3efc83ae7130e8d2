"""NodeSelector: what a chute author may declare (validation, round trip)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from canopy.node_selector import NodeSelector


@pytest.mark.parametrize("bad", [
    {"gpu_count": 0}, {"gpu_count": 9}, {"min_vram_gb_per_gpu": -1}, {"include": []}, {"exclude": [""]},
    {"include": ["h100"], "exclude": ["h100"]}, {"colour": "red"}, {"include": "h100"},
])
def test_invalid_selectors_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        NodeSelector(**bad)


def test_defaults_and_frozen() -> None:
    selector = NodeSelector()
    assert (selector.gpu_count, selector.min_vram_gb_per_gpu, selector.include, selector.exclude) == (1, 16, None, None)
    with pytest.raises(ValidationError):
        selector.gpu_count = 2  # type: ignore[misc]
    assert NodeSelector.model_validate_json(selector.model_dump_json()) == selector
