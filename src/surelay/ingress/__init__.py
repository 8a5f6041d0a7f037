"""The way in: how accepted sends reach the outbox (see `gather.py`)."""
