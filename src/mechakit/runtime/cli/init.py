"""``mechakit init``: write the default components ``mechakit run`` loads."""

from __future__ import annotations

import argparse
import sys

NAME = "init"
HELP = "write the default components into $MECHAKIT_HOME/components (~/.mechakit)"
DESCRIPTION = (
    "Write Component YAML for a SQLite state store (statestore), in-memory "
    "pub/sub (pubsub) and locks (lockstore) into the folder 'mechakit run' loads by "
    "default. Files that exist are kept unless --force is given."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.set_defaults(handler=_init)


def _init(namespace: argparse.Namespace, _: list[str]) -> int:
    from mechakit.runtime.defaults import components_dir, default_components, mechakit_home

    home = mechakit_home()
    folder = components_dir(home)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in default_components(home).items():
            path = folder / name
            if path.exists() and not namespace.force:
                print(f"kept     {path} (it exists; --force overwrites it)")
                continue
            verb = "replaced" if path.exists() else "wrote"
            path.write_text(text, encoding="utf-8")
            print(f"{verb:<8} {path}")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n'mechakit run --app-id myapp -- <command>' now uses these components")
    return 0
