"""The validator/API store: tables (``store.tables``, ``store.api_tables``), the Alembic
migrations both roles open through (``store.schema``, ``store/migrations``) and the queries
(``store.queries``). The node core of the roles that keep state: it imports no role.
"""

from canopy.extras import require_node_extra

require_node_extra(__name__)

