"""Thin Lightning adapters over the measurement engine and the pure analysis layers."""
