"""The public OpenAI-compatible gateway (``api.app.build_app``): keys, credits, limits,
moderation, routing to miners, request logs and the admin routes.
"""

from canopy.extras import require_node_extra

require_node_extra(__name__)

