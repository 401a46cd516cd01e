"""Dialogue data: where conversations come from, how they are cleaned, the table they become, its partitions."""
