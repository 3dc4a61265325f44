"""HTTP routers, one per resource, and their typed dependencies."""
