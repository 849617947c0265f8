"""Shared fixtures. Fake services live in tests/fakes and bind only 127.0.0.1."""

pytest_plugins = ["tests.fakes.llm_fixtures", "tests.fakes.hxd_fixtures"]
