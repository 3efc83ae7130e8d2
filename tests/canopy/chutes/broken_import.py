"""A chute module that fails to import."""

import definitely_not_an_installed_module  # noqa: F401

from canopy import Chute

chute = Chute(username="tester", name="broken-import")
