"""The actors only: sender, retry scheduler, dead-letter sink, governor, sweeper, status,
replay coordinator and workers (docs/architecture.md has the tree)."""
