"""Helpers shared by tests: builders of core views (core_views), and drivers of real
components (daemons, namespaces, processes)."""
