"""``python -m mechakit`` is the ``mechakit`` command."""

from mechakit.runtime.cli import main

raise SystemExit(main())
