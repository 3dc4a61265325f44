"""The model store, the model a worker serves, and its hot reload."""
