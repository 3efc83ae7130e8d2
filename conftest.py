"""pytest's root configuration: the fixtures that start real servers, shared by every test
package as plugins (tests import no fixture from another test module)."""

pytest_plugins = ["tests.support.postgres_server", "tests.support.redis_server"]
