"""Datasets, the synthetic generator and the one preprocessing reference (numpy + Pillow only)."""
