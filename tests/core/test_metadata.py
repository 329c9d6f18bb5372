"""Typed settings from Dapr's string metadata."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from mechakit.core.errors import MetadataError
from mechakit.core.metadata import (
    Bool,
    ByteSize,
    Duration,
    Sensitive,
    Settings,
    StrList,
    format_duration,
    parse_bool,
    parse_bytesize,
    parse_duration,
    setting,
)


class ExampleSettings(Settings):
    host: str = setting(name="redisHost", example="localhost:6379", description="Where.")
    password: Sensitive = setting(Sensitive(""), name="redisPassword")
    tls: Bool = setting(False, name="enableTLS", aliases=("useTLS",))
    timeout: Duration = setting(timedelta(seconds=5), name="dialTimeout")
    max_size: ByteSize = setting(1024, name="maxSize")
    topics: StrList = setting((), name="topics")
    retries: int = setting(3, name="maxRetries")


LABEL = "state.redis 'statestore'"


def decode(**properties: str) -> ExampleSettings:
    return ExampleSettings.from_metadata(properties, component=LABEL)


def test_names_are_case_insensitive_and_aliases_work() -> None:
    settings = decode(REDISHOST="h:1", usetls="yes", dialtimeout="1m30s")
    assert settings.host == "h:1"
    assert settings.tls is True
    assert settings.timeout == timedelta(seconds=90)


@pytest.mark.parametrize("word", ["y", "yes", "true", "t", "on", "1", "TRUE", " On "])
def test_truthy_words_are_true(word: str) -> None:
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", ["n", "no", "false", "f", "off", "0", "False"])
def test_falsy_words_are_false(word: str) -> None:
    assert parse_bool(word) is False


def test_unknown_bool_word_is_an_error_naming_the_field_not_a_silent_false() -> None:
    with pytest.raises(MetadataError) as info:
        decode(redisHost="h:1", enableTLS="maybe")
    message = str(info.value)
    assert message.startswith(LABEL)
    assert "'enableTLS'" in message and "'maybe'" in message
    assert info.value.field == "enableTLS"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m30s", 90),
        ("500ms", 0.5),
        ("2h", 7200),
        ("15", 15),
        ("1.5s", 1.5),
        ("-2s", -2),
        ("100us", 0.0001),
    ],
)
def test_go_durations_and_integer_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5 s", "1x", "s", "1m30"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_durations_format_back_to_go_style() -> None:
    for text in ("1m30s", "500ms", "2h", "1h0m5s".replace("0m", ""), "1.5s"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [("10Mi", 10 * 2**20), ("1G", 10**9), ("512k", 512_000), ("1.5Ki", 1536), ("2048", 2048)],
)
def test_byte_sizes_follow_kubernetes_quantities(text: str, size: int) -> None:
    assert parse_bytesize(text) == size


def test_bad_byte_size_names_the_field() -> None:
    with pytest.raises(MetadataError, match="'maxSize'.*not a byte size"):
        decode(redisHost="h", maxSize="ten")


def test_comma_lists_drop_blanks() -> None:
    assert decode(redisHost="h", topics=" a, b ,,c ").topics == ("a", "b", "c")


def test_missing_required_field_says_what_to_write() -> None:
    with pytest.raises(MetadataError) as info:
        decode()
    assert str(info.value) == f"{LABEL}: metadata 'redisHost' is required (e.g. localhost:6379)"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(MetadataError) as info:
        decode(enableTLS="maybe", maxRetries="many")
    message = str(info.value)
    assert "'redisHost' is required" in message
    assert "'enableTLS'" in message
    assert "'maxRetries'" in message


def test_unknown_metadata_warns_with_the_close_match(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        decode(redisHost="h", redisHots="x", dialTimeOut="1s")
    assert "unknown metadata 'redisHots' is ignored; did you mean 'redisHost'?" in caplog.text
    assert "dialTimeOut" not in caplog.text  # case-insensitive match is not unknown


def test_same_field_set_twice_is_an_error() -> None:
    with pytest.raises(MetadataError, match="both set 'enableTLS'"):
        decode(redisHost="h", enableTLS="true", useTLS="false")


def test_sensitive_values_never_appear_in_errors_repr_or_redacted_output() -> None:
    settings = decode(redisHost="h", redisPassword="hunter2")
    assert settings.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    assert settings.redacted()["redisPassword"] == "******"


def test_json_schema_uses_dapr_names_and_marks_sensitive_fields() -> None:
    schema = ExampleSettings.json_schema()
    props = schema["properties"]
    assert set(props) >= {"redisHost", "redisPassword", "enableTLS", "dialTimeout", "maxSize"}
    assert schema["required"] == ["redisHost"]
    assert props["redisPassword"]["sensitive"] is True
    assert props["dialTimeout"]["format"] == "duration"
    assert props["dialTimeout"]["default"] == "5s"


def test_field_docs_list_defaults_and_aliases() -> None:
    docs = {d.name: d for d in ExampleSettings.fields_doc()}
    assert docs["redisHost"].required and docs["redisHost"].example == "localhost:6379"
    assert docs["enableTLS"].aliases == ("useTLS",)
    assert docs["enableTLS"].default == "false"
    assert docs["dialTimeout"].default == "5s"
    assert docs["redisPassword"].sensitive and docs["redisPassword"].default is None


def test_a_dapr_name_that_is_the_field_name_in_camel_case_need_not_be_written() -> None:
    class Derived(Settings):
        table_name: str = setting("state", description="the table")
        enable_tls: bool = setting(False, name="enableTLS")

    settings = Derived.from_metadata({"TableName": "t", "enableTLS": "true"}, component="c")
    assert (settings.table_name, settings.enable_tls) == ("t", True)
    assert [f.name for f in Derived.fields_doc()] == ["tableName", "enableTLS"]
