"""Helpers shared by tests that drive real components (daemons, namespaces, processes)."""
