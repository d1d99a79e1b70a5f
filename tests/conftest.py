"""Real registries for every test that needs one (see tests/kit/fixtures.py)."""

pytest_plugins = ["tests.kit.fixtures"]
