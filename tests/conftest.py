pytest_plugins = ["unifiedq.testing.fixtures"]
