"""The API tests' fixture: ``gateway`` (``tests.support.gateway``), a module-scoped subnet
of three real miners behind the gateway."""

from tests.support.gateway import gateway  # noqa: F401 - the fixture, shared with tests/test_readme_examples.py
