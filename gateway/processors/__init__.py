"""Processors: consumers of an internal topic that publish derived messages (alerts, cache invalidations)."""
