pytest_plugins = ["mechakit.conformance.plugin"]
