"""surelay.actors (see DESIGN.md)."""
