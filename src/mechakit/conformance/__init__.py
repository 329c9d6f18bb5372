"""The reusable conformance suite: per component type, gated by declared features.

Third-party authors: ``mechakit conformance my-component.yaml`` runs every suite of the
component's type against it. See docs/authoring.md.
"""

from __future__ import annotations

import pytest

requires = pytest.mark.requires_features
"""``@requires("ETAG")``: the test runs only for targets declaring every named feature."""

without = pytest.mark.without_features
"""``@without("TTL")``: the test runs only for targets declaring none of the named features."""

__all__ = ["requires", "without"]
