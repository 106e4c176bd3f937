"""Offline tools beside the live service: bench, reenact and devices."""
