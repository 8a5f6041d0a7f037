"""The way in: how sends, consumed messages and relayed rows are checked, admitted,
routed and written to the outbox (`way_in.py` for sends, `endpoint.py` for what every
way in is given)."""
