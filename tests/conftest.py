"""Shared fixtures. Fake services live in tests/fakes and bind only 127.0.0.1."""
