"""mechakit: Dapr-compatible component plug-ins for Python, and a minimal runtime around them."""

from __future__ import annotations

__version__ = "0.1.0"
