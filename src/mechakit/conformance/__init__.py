"""The reusable conformance suite: per component type, gated by declared features.

Third-party authors: ``mechakit conformance my-component.yaml`` runs every suite of the
component's type against it. See docs/authoring.md.

``@requires(StateFeature.ETAG)`` runs a test only for targets expected to declare every
named feature, ``@without(StateFeature.TTL)`` only for those declaring none of them (it
checks absence). Names as strings are accepted; one that is not a feature is an error when
the decorator runs, and one of another building block when the suite is collected.
"""

from __future__ import annotations

from .requirements import UnknownFeatureError, requires, without

__all__ = ["UnknownFeatureError", "requires", "without"]
