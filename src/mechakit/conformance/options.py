"""Suite options (``options:`` of a matrix target): declared, typed, and checked on load.

Every option a suite reads is declared here with its type and default, so a misspelled
option in a matrix file is an error naming the option, the file and the known options,
instead of a default silently used. Each suite module's docstring says what they mean.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NUMBER = (int, float)


@dataclass(frozen=True)
class SuiteOption:
    name: str
    types: tuple[type, ...]
    """The YAML value types accepted (``bool`` is never taken for a number)."""
    default: Any = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if isinstance(value, bool) and bool not in self.types:
            return f"must be {self.expected}, got {value!r}"
        if not isinstance(value, self.types):
            return f"must be {self.expected}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        return None

    @property
    def expected(self) -> str:
        names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        names |= {list: "a list", dict: "a mapping"}
        if self.types == NUMBER:
            return "a number"
        return " or ".join(names.get(t, t.__name__) for t in self.types)


def _options(*options: SuiteOption) -> Mapping[str, SuiteOption]:
    return {o.name: o for o in options}


COMMON_OPTIONS = _options(
    SuiteOption("files", (dict,), {}),
    SuiteOption("env", (dict,), {}),
)
"""Options of every target, read by the plugin: files written into ``{tmp}``, variables set."""

SUITE_OPTIONS: Mapping[str, Mapping[str, SuiteOption]] = {
    "state": _options(
        SuiteOption("bad_etag", (str,), "not-an-etag"),
        SuiteOption("large_value_bytes", (int,), 1 << 20),
        SuiteOption("concurrent_writers", (int,), 10),
        SuiteOption("shared_storage", (bool,), True),
        SuiteOption("transaction_keys_share_slot", (bool,), False),
    ),
    "pubsub": _options(
        SuiteOption("receive_timeout", NUMBER, 10.0),
        SuiteOption("quiet_period", NUMBER, 1.0),
        SuiteOption("ordered", (bool,), False),
        SuiteOption("supports_dead_letter", (bool,), True),
        SuiteOption("counts_deliveries", (bool,), True),
        SuiteOption("shared_broker", (bool,), False),
        SuiteOption("second_subscriber_metadata", (dict,), {"consumerID": "conformance-second"}),
        SuiteOption("subscribe_delay", NUMBER, 0.0),
    ),
    "bindings": _options(
        SuiteOption("direction", (str,), None, choices=("input", "output", "both")),
        SuiteOption("operations", (list,), None),
        SuiteOption("crud", (bool,), None),
        SuiteOption("name_metadata", (str,), "fileName"),
        SuiteOption("deleted_get", (str,), "not_found", choices=("not_found", "empty")),
        SuiteOption("request_metadata", (dict,), {}),
        SuiteOption("echo_operation", (str,), None),
        SuiteOption("loopback", (str,), None),
        SuiteOption("read_timeout", NUMBER, 10),
        SuiteOption("quiet_period", NUMBER, 1.5),
    ),
    "secretstores": _options(
        SuiteOption("secrets", (dict,), None),
        SuiteOption("missing_secret", (str,), "mechakit-conformance-missing-secret"),
    ),
    "lock": _options(
        SuiteOption("expiry_timeout", NUMBER, 3),
    ),
    "nameresolution": _options(
        SuiteOption("addresses", (list,), []),
    ),
    "configuration": _options(
        SuiteOption("writer", (str,), None),
        SuiteOption("receive_timeout", NUMBER, 10),
        SuiteOption("quiet_period", NUMBER, 1),
    ),
}
"""Building block → the options its suite reads."""


class UnknownOptionError(LookupError):
    """A suite asked for an option its building block does not declare."""


def options_of(category: str) -> Mapping[str, SuiteOption]:
    """Every option a target of ``category`` may set (its suite's and the common ones)."""
    return {**COMMON_OPTIONS, **SUITE_OPTIONS.get(category, {})}


def declared_option(category: str, name: str) -> SuiteOption:
    """The declaration of option ``name``; ``UnknownOptionError`` for a name not declared."""
    found = options_of(category).get(name)
    if found is None:
        raise UnknownOptionError(unknown_option_message(category, name))
    return found


def unknown_option_message(category: str, name: str) -> str:
    known = sorted(options_of(category))
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return (
        f"unknown option {name!r} for a {category} target (known options: {', '.join(known)}){hint}"
    )


def option_problems(category: str, options: Mapping[str, Any]) -> list[str]:
    """What is wrong with a target's ``options``: unknown names, wrong types."""
    known = options_of(category)
    problems = []
    for name, value in options.items():
        declared = known.get(str(name))
        if declared is None:
            problems.append(unknown_option_message(category, str(name)))
            continue
        why = declared.check(value)
        if why is not None:
            problems.append(f"option {name!r} {why}")
    return problems
