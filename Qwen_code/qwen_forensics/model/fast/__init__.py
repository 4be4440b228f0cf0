"""The fast paths (switch and handle below)."""
