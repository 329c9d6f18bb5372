"""``python -m mechakit.runtime.cli`` is the ``mechakit`` command."""

from mechakit.runtime.cli import main

raise SystemExit(main())
