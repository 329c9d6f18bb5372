"""Tests of mechakit.runtime: manifests, host, in-process API, CLI."""
