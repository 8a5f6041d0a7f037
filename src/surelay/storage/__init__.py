"""surelay.storage (see DESIGN.md)."""
