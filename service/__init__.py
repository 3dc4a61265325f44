"""The decision service: FastAPI app, durable decision and reward logs, joiner, model store."""
