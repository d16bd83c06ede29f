"""Fixtures of the tracking tests live in tests/conftest.py (the serving tests share them)."""
