"""Request parsing shared by every state store: options, TTL, query language, values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mechakit.core.errors import InvalidRequestError
from mechakit.core.state import (
    Concurrency,
    Consistency,
    KeyPrefix,
    Query,
    StateOptions,
    decode_value,
    encode_value,
    expire_time,
    format_expire_time,
    parse_ttl,
)


def test_options_parse_dapr_words_and_reject_others() -> None:
    options = StateOptions.parse("first-write", "STRONG")
    assert options.concurrency is Concurrency.FIRST_WRITE
    assert options.consistency is Consistency.STRONG
    assert StateOptions.parse(None, "") == StateOptions()
    with pytest.raises(InvalidRequestError, match="concurrency must be one of"):
        StateOptions.parse("first", None)


@pytest.mark.parametrize(("raw", "ttl"), [("10", 10), ("-1", -1), (" 3 ", 3), ("", None)])
def test_ttl_in_seconds(raw: str, ttl: int | None) -> None:
    assert parse_ttl({"ttlInSeconds": raw}) == ttl


@pytest.mark.parametrize("raw", ["0", "-5", "1.5", "ten"])
def test_bad_ttl_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidRequestError, match="ttlInSeconds"):
        parse_ttl({"TTLInSeconds": raw})


def test_expire_time_is_rfc3339_utc() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    when = expire_time(60, now)
    assert when is not None
    assert format_expire_time(when) == "2026-01-02T03:05:05Z"
    assert expire_time(-1, now) is None


def test_values_round_trip_bytes_raw_and_everything_else_as_json() -> None:
    for value in ({"n": 1}, [1, "ü"], "text", 3, 2.5, True, None, b"\x00\xff"):
        data, is_binary = encode_value(value)
        assert decode_value(data, is_binary) == value
    assert encode_value(b"raw") == (b"raw", True)
    assert encode_value({"a": 1}) == (b'{"a":1}', False)
    with pytest.raises(InvalidRequestError, match="not JSON serialisable"):
        encode_value(object())


def test_key_prefix_strategies() -> None:
    assert KeyPrefix.resolve("appid", app_id="app", component_name="s").apply("k") == "app||k"
    assert KeyPrefix.resolve("name", app_id="app", component_name="s").apply("k") == "s||k"
    assert KeyPrefix.resolve("none", app_id="app", component_name="s").apply("k") == "k"
    custom = KeyPrefix.resolve("shared", app_id="app", component_name="s")
    assert custom.strip(custom.apply("k")) == "k"
    assert KeyPrefix.resolve("appid", app_id="", component_name="s").apply("k") == "k"


def test_query_language_parses_nested_filters_sort_and_page() -> None:
    query = Query.from_dict(
        {
            "filter": {
                "AND": [
                    {"EQ": {"state": "CA"}},
                    {"OR": [{"IN": {"n": [1, 2]}}, {"GT": {"a.b": 3}}]},
                ]
            },
            "sort": [{"key": "n", "order": "DESC"}],
            "page": {"limit": 2, "token": "2"},
        }
    )
    assert query.filter is not None and query.filter.op == "AND"
    assert query.filter.children[1].children[1].key == "a.b"
    assert query.sort[0].descending and query.limit == 2 and query.token == "2"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"filter": {"LIKE": {"a": 1}}}, "unknown query operator 'LIKE'"),
        ({"filter": {"IN": {"a": 1}}}, "needs a list"),
        ({"filter": {"AND": [{"EQ": {"a": 1}}]}}, "at least two"),
        ({"sort": [{"key": "a", "order": "UP"}]}, "ASC or DESC"),
        ({"page": {"limit": -1}}, "limit"),
    ],
)
def test_bad_queries_are_rejected_with_the_reason(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        Query.from_dict(body)


async def test_bulk_get_by_stored_key_keeps_request_order_and_reports_each_key() -> None:
    from mechakit.core.state import GetRequest, StateItem, bulk_get_by_stored_key

    prefix = KeyPrefix("app")
    asked: list[list[str]] = []

    async def fetch(keys: list[str]) -> dict[str, StateItem]:
        asked.append(keys)
        return {"app||a": StateItem("app||a", {"n": 1}, "7")}

    requests = [GetRequest("missing"), GetRequest("a"), GetRequest(""), GetRequest("a")]
    entries = await bulk_get_by_stored_key(requests, prefix, fetch)
    assert asked == [["app||missing", "app||a"]]
    assert [(e.key, e.found, e.value, e.etag) for e in entries] == [
        ("missing", False, None, None),
        ("a", True, {"n": 1}, "7"),
        ("", False, None, None),
        ("a", True, {"n": 1}, "7"),
    ]
    assert entries[2].error == "the key must not be empty"


def test_numeric_etags_must_be_positive_integers() -> None:
    from mechakit.core.errors import ETagError, ETagErrorKind
    from mechakit.core.state import parse_int_etag

    assert parse_int_etag("007", component="c", key="k") == 7
    assert parse_int_etag(None, component="c", key="k") is None
    for bad in ("0", "-1", "1.0", " 1", "x", "9" * 20):
        with pytest.raises(ETagError) as info:
            parse_int_etag(bad, component="c", key="k")
        assert info.value.kind is ETagErrorKind.INVALID
