"""The durable decision and reward logs: segment files, the log lines, the index of events."""
