"""The HTTP edge: the FastAPI app, its schemas, the conversion to domain types and the routes."""
