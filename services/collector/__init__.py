"""Collector: scrapes every proxy replica and writes SQL rollups."""
