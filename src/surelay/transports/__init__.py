"""surelay.transports (see DESIGN.md)."""
