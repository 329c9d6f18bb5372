"""state.redis: each key a Redis hash (``data``, ``version``, ``binary``); ETag = version.

Every write is one EVALSHA of a Lua script that checks the ETag (or first-write), writes,
and sets or removes the TTL, so it is atomic and one round trip. A transaction is one
script call that checks every operation before writing anything. Reads are one script
call too and report ``ttlExpireTime``. Unlike upstream Dapr, first-write applies only to
the request that asks for it, connection failures are never reported as ETag errors, and
a malformed ETag is ``ETagError(INVALID)``.

A conditional write (ETag, first-write, transaction) carries a fresh request id, and the
script that applies it leaves a short-lived marker under that id: redis-py sends a command
again after a timeout, and the copy that arrives after the first one was applied finds the
marker and answers success instead of a false conflict with its own write. A caller whose
retries all failed gets a retriable error saying the write may or may not have been
applied. Writes without conditions are left to repeat: a second copy changes nothing a
caller can tell but the version number.

Writes without ``ttlInSeconds`` (and no component default) leave an existing expiry as
it is, as Redis and Dapr do; ``-1`` removes it. QUERY_API is not offered: it would need
the RedisJSON and RediSearch modules and is not implemented.

Redis Cluster: a script runs on the keys of one hash slot only, so a transaction whose keys
live in different slots is refused (``InvalidRequestError`` saying so, nothing written); a
common ``{hashtag}`` in the keys keeps them together. Bulk calls, which need no atomicity,
run concurrently there, each on its key's node.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import field_validator

from mechakit.components._shared.redis import (
    RedisDriver,
    RedisScript,
    RedisSettings,
    ScriptCall,
    is_cluster,
    map_error,
    redis_errors,
    run_pipelined,
    same_slot_key,
)
from mechakit.core.errors import (
    BulkError,
    ETagError,
    InvalidRequestError,
)
from mechakit.core.metadata import setting
from mechakit.core.state import (
    MAX_TTL_SECONDS,
    BulkGetItem,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateFeature,
    StateItem,
    StateSettings,
    TransactionalStore,
    TransactionOperation,
    decode_value,
    parse_int_etag,
    prepare_each,
    prepare_value,
    ttl_metadata,
)


class RedisStateSettings(RedisSettings, StateSettings):
    ttl_in_seconds: int | None = setting(
        None,
        description="Default TTL of every write that names none; requests may override it.",
        example="3600",
    )

    @field_validator("ttl_in_seconds")
    @classmethod
    def _check_ttl(cls, value: int | None) -> int | None:
        if value is not None and ((value <= 0 and value != -1) or value > MAX_TTL_SECONDS):
            raise ValueError(f"must be 1 to {MAX_TTL_SECONDS}, or -1 for no expiry")
        return value


class RedisStateStore(RedisDriver[RedisStateSettings], TransactionalStore[RedisStateSettings]):
    """Dapr's Redis state store, atomic per request and per transaction."""

    FEATURES = frozenset({StateFeature.ETAG, StateFeature.TTL})

    def __init__(self) -> None:
        super().__init__()
        self._marker_seconds = 0
        """How long a write's marker lives; 0 when the client never sends a command twice."""
        self._cluster = False

    async def open(self) -> None:
        await super().open()
        settings = self.settings
        self._cluster = is_cluster(self._client)
        if settings.max_retries:
            # Outlive every copy the client may send: each attempt waits up to the socket
            # timeout plus the backoff; doubled, and at least a minute.
            attempt = settings.socket_timeout + max(settings.max_retry_backoff.total_seconds(), 0)
            self._marker_seconds = max(60, math.ceil(2 * (settings.max_retries + 1) * attempt))

    async def get(self, request: GetRequest) -> StateItem | None:
        with redis_errors(self.label, key=request.key, action="get"):
            reply = await self._calls.script(_GET, [self.stored_key(request.key)], [])
        return self._item(request.key, reply)

    async def set(self, request: SetRequest) -> None:
        script, keys, args = self._set_call(request)
        with redis_errors(self.label, key=request.key, action="set", write=True):
            status = await self._calls.script(script, keys, args)
        if status:
            raise self._etag_error(request.key, int(status))

    async def delete(self, request: DeleteRequest) -> None:
        with redis_errors(self.label, key=request.key, action="delete", write=True):
            status = await self._calls.script(_DELETE, *self._delete_call(request))
        if status:
            raise self._etag_error(request.key, int(status))

    async def bulk_get(self, requests: Sequence[GetRequest]) -> list[BulkGetItem]:
        """One pipeline; a key whose read failed carries the error in its entry."""

        async def fetch(keys: list[str]) -> dict[str, StateItem | Exception]:
            replies = await self._pipelined([(_GET, [k], []) for k in keys], "bulk get")
            found: dict[str, StateItem | Exception] = {}
            for stored_key, reply in zip(keys, replies, strict=True):
                key = self.key_prefix.strip(stored_key)
                if isinstance(reply, Exception):
                    found[stored_key] = map_error(
                        reply, component=self.label, key=key, action="get"
                    )
                elif (item := self._item(key, reply)) is not None:
                    found[stored_key] = item
            return found

        return await self.bulk_get_stored(requests, fetch)

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        """One pipeline of independent writes; ``BulkError`` names each key that failed.

        A connection lost during the pipeline raises ``ConnectionFailedError`` instead, as
        which items were applied is then unknown. (On a cluster each write is its own call,
        so a lost connection fails only the writes it carried, each named in ``BulkError``.)
        """
        calls = prepare_each(requests, self._set_call, component=self.label)
        await self._bulk_write(requests, calls, "bulk set")

    async def bulk_delete(self, requests: Sequence[DeleteRequest]) -> None:
        calls = prepare_each(requests, self._delete_script_call, component=self.label)
        await self._bulk_write(requests, calls, "bulk delete")

    async def transact(
        self, operations: Sequence[TransactionOperation], metadata: Mapping[str, str] | None = None
    ) -> None:
        """One script: every ETag and first-write check first, then every write, or nothing."""
        if not operations:
            return
        keys: list[str] = []
        args: list[Any] = [""]
        for op in operations:
            if isinstance(op, SetRequest):
                op_keys, (data, binary, ttl, etag, first_write) = self._set_args(op)
                args += ["s", etag, first_write, data, binary, ttl]
            elif isinstance(op, DeleteRequest):
                op_keys = [self.stored_key(op.key)]
                args += ["d", self._etag(op.key, op.etag), "", b"", "", ""]
            else:
                raise InvalidRequestError(
                    f"transaction operation must be a SetRequest or DeleteRequest, got {op!r}",
                    component=self.label,
                )
            keys += op_keys
        marker = self._marker(keys[0])
        if marker is not None:
            keys.append(marker)
            args[0] = str(self._marker_seconds)
        with redis_errors(self.label, action="transaction", write=True):
            reply = await self._calls.script(_TRANSACT, keys, args)
        failed = int(reply[0])
        if failed:
            op = operations[failed - 1]
            raise self._etag_error(op.key, int(reply[1]))

    def _marker(self, stored_key: str) -> str | None:
        """A fresh marker key for one conditional write, in ``stored_key``'s hash slot."""
        if not self._marker_seconds:
            return None
        name = f"mechakit-applied:{os.urandom(12).hex()}"
        return same_slot_key(stored_key, name) if self._cluster else name

    def _set_call(self, request: SetRequest) -> ScriptCall:
        """A write with an ETag or first-write runs the checking script; others the plain one."""
        keys, args = self._set_args(request)
        if not (args[3] or args[4]):
            return _SET, keys, args[:3]
        marker = self._marker(keys[0])
        if marker is None:
            return _CHECKED_SET, keys, args
        return _CHECKED_SET, [*keys, marker], [*args, str(self._marker_seconds)]

    def _set_args(self, request: SetRequest) -> tuple[list[str], list[Any]]:
        """Keys and ARGV of the checking set script: data, binary, ttl, etag, first_write."""
        etag = self._etag(request.key, request.etag)
        value = prepare_value(request, component=self.label)
        ttl = value.ttl if value.ttl is not None else self.settings.ttl_in_seconds
        first_write = "1" if request.first_write and not etag else ""
        return [self.stored_key(request.key)], [
            value.data,
            "1" if value.is_binary else "",
            "" if ttl is None else str(ttl),
            etag,
            first_write,
        ]

    def _delete_script_call(self, request: DeleteRequest) -> ScriptCall:
        return (_DELETE, *self._delete_call(request))

    def _delete_call(self, request: DeleteRequest) -> tuple[list[str], list[Any]]:
        stored_key, etag = self.stored_key(request.key), self._etag(request.key, request.etag)
        marker = self._marker(stored_key) if etag else None
        if marker is None:
            return [stored_key], [etag]
        return [stored_key, marker], [etag, str(self._marker_seconds)]

    def _etag(self, key: str, etag: str | None) -> str:
        """The canonical version text, so ``"007"`` matches version 7; '' for no ETag."""
        version = parse_int_etag(etag, component=self.label, key=key)
        return "" if version is None else str(version)

    def _etag_error(self, key: str, status: int) -> ETagError:
        return self.etag_mismatch(key, first_write=status == _FIRST_WRITE_CONFLICT)

    def _item(self, key: str, reply: Sequence[Any] | None) -> StateItem | None:
        if not reply:
            return None
        data, version, binary, pttl = reply
        try:
            value = decode_value(data, binary == b"1")
        except ValueError:
            value = bytes(data)  # written by something other than mechakit: hand back the bytes
        expires_at = time.time() + int(pttl) / 1000 if int(pttl) > 0 else None
        return StateItem(key, value, version.decode(), ttl_metadata(expires_at))

    async def _pipelined(
        self, calls: Sequence[ScriptCall], action: str, *, write: bool = False
    ) -> list[Any]:
        if not calls:
            return []
        with redis_errors(self.label, action=action, write=write):
            return await run_pipelined(self._redis, calls)

    async def _bulk_write(
        self, requests: Sequence[SetRequest | DeleteRequest], calls: list[ScriptCall], action: str
    ) -> None:
        results = await self._pipelined(calls, action, write=True)
        errors: dict[str, Exception] = {}
        for request, reply in zip(requests, results, strict=True):
            if isinstance(reply, Exception):
                errors[request.key] = map_error(
                    reply, component=self.label, key=request.key, action=action, write=True
                )
            elif int(reply):
                errors[request.key] = self._etag_error(request.key, int(reply))
        if errors:
            raise BulkError(errors, component=self.label)


_FIRST_WRITE_CONFLICT = 2

# Write scripts return 0 (written), 1 (ETag mismatch) or 2 (first-write on an existing key).
# ``write`` stores data and the next version and applies the TTL ('' keep, '-1' remove,
# n seconds); a version that is not a number (written by something else) counts as 0.
_LUA_WRITE = """
local function write(key, current, data, binary, ttl)
  local version = (tonumber(current) or 0) + 1
  redis.call('HSET', key, 'data', data, 'version', version, 'binary', binary)
  if ttl == '-1' then
    redis.call('PERSIST', key)
  elseif ttl ~= '' then
    redis.call('EXPIRE', key, ttl)
  end
  return version
end
"""
# KEYS[n] ``marker``: a key naming one request, present once that request was applied.
_LUA_ONCE = """
local function applied_before(marker)
  return marker ~= nil and redis.call('EXISTS', marker) == 1
end
local function remember(marker, seconds)
  if marker ~= nil then redis.call('SET', marker, '1', 'EX', seconds) end
end
"""
_LUA_CHECK = """
local function check(current, etag, first_write)
  if etag ~= '' then
    if current ~= etag then return 1 end
  elseif first_write == '1' and current then
    return 2
  end
  return 0
end
"""

_GET = RedisScript(
    """
local h = redis.call('HMGET', KEYS[1], 'data', 'version', 'binary')
if not h[2] then return false end
return {h[1] or '', h[2], h[3] or '', redis.call('PTTL', KEYS[1])}
"""
)

# The common write, without ETag or first-write: nothing to check.  ARGV: data, binary, ttl
_SET = RedisScript(
    _LUA_WRITE
    + """
write(KEYS[1], redis.call('HGET', KEYS[1], 'version'), ARGV[1], ARGV[2], ARGV[3])
return 0
"""
)

# KEYS: key[, marker]; ARGV: data, binary, ttl, etag, first_write[, marker seconds]
_CHECKED_SET = RedisScript(
    _LUA_WRITE
    + _LUA_CHECK
    + _LUA_ONCE
    + """
if applied_before(KEYS[2]) then return 0 end
local current = redis.call('HGET', KEYS[1], 'version')
local status = check(current, ARGV[4], ARGV[5])
if status ~= 0 then return status end
write(KEYS[1], current, ARGV[1], ARGV[2], ARGV[3])
remember(KEYS[2], ARGV[6])
return 0
"""
)

# KEYS: key[, marker (with an etag only)]; ARGV: etag[, marker seconds]
_DELETE = RedisScript(
    _LUA_CHECK
    + _LUA_ONCE
    + """
if ARGV[1] ~= '' then
  if applied_before(KEYS[2]) then return 0 end
  local status = check(redis.call('HGET', KEYS[1], 'version'), ARGV[1], '')
  if status ~= 0 then return status end
end
redis.call('DEL', KEYS[1])
remember(KEYS[2], ARGV[2])
return 0
"""
)

# KEYS: one per operation (repeats allowed)[, marker]; ARGV: marker seconds ('' for no
# marker), then 6 per operation: kind ('s' set / 'd' delete), etag, first_write, data,
# binary, ttl. Checks run against the state as the earlier operations leave it.
_TRANSACT = RedisScript(
    _LUA_WRITE
    + _LUA_CHECK
    + _LUA_ONCE
    + """
local ops, marker = KEYS, nil
if ARGV[1] ~= '' then
  ops, marker = {unpack(KEYS, 1, #KEYS - 1)}, KEYS[#KEYS]
  if applied_before(marker) then return {0} end
end
local seen, versions, stored = {}, {}, {}
for i, key in ipairs(ops) do
  local b = (i - 1) * 6 + 1
  if not seen[key] then
    seen[key] = true
    versions[key] = redis.call('HGET', key, 'version')
    stored[key] = versions[key]
  end
  local current = versions[key]
  local status = check(current, ARGV[b + 2], ARGV[b + 1] == 's' and ARGV[b + 3] or '')
  if status ~= 0 then return {i, status} end
  if ARGV[b + 1] == 's' then
    versions[key] = tostring((tonumber(current) or 0) + 1)
  else
    versions[key] = false
  end
end
for i, key in ipairs(ops) do
  local b = (i - 1) * 6 + 1
  if ARGV[b + 1] == 's' then
    stored[key] = write(key, stored[key], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6])
  else
    redis.call('DEL', key)
    stored[key] = false
  end
end
remember(marker, ARGV[1])
return {0}
"""
)

__all__ = ["RedisStateSettings", "RedisStateStore"]
