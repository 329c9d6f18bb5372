"""mechakit's own drivers, announced through the same entry point a third-party package uses."""

from __future__ import annotations

from mechakit.core.registry import ComponentSpec, hookimpl

_PKG = "mechakit.components"


@hookimpl
def mechakit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            "state.in-memory",
            f"{_PKG}.state.in_memory:InMemoryStateStore",
            description="State in process memory: ETags, TTL, transactions. Lost on exit.",
        ),
        ComponentSpec(
            "state.sqlite",
            f"{_PKG}.state.sqlite:SQLiteStateStore",
            description="State in a SQLite file, safe for several processes on one file.",
            aliases=("state.sqlite3",),
        ),
        ComponentSpec(
            "state.redis",
            f"{_PKG}.state.redis:RedisStateStore",
            install_hint="pip install 'mechakit[redis]'",
            requires=("redis",),
            description="State in Redis hashes: atomic ETag checks, TTL, all-or-nothing transactions.",
        ),
        ComponentSpec(
            "state.postgresql",
            f"{_PKG}.state.postgresql:PostgreSQLStateStore",
            install_hint="pip install 'mechakit[postgresql]'",
            requires=("psycopg", "psycopg_pool"),
            description="State in a PostgreSQL table: atomic ETag checks, TTL, transactions, query.",
            aliases=("state.postgres",),
        ),
        ComponentSpec(
            "state.aws.dynamodb",
            f"{_PKG}.state.aws_dynamodb:DynamoDBStateStore",
            install_hint="pip install 'mechakit[aws]'",
            requires=("boto3",),
            description="State in a DynamoDB table: conditional-write ETags, TTL, transactions.",
        ),
        ComponentSpec(
            "pubsub.in-memory",
            f"{_PKG}.pubsub.in_memory:InMemoryPubSub",
            description="Pub/sub within one process: at-least-once, dead letters.",
        ),
        ComponentSpec(
            "pubsub.redis",
            f"{_PKG}.pubsub.redis:RedisPubSub",
            install_hint="pip install 'mechakit[redis]'",
            requires=("redis",),
            description="Pub/sub on Redis Streams: consumer groups, ack after success, dead letters.",
        ),
        ComponentSpec(
            "pubsub.jetstream",
            f"{_PKG}.pubsub.jetstream:JetStreamPubSub",
            install_hint="pip install 'mechakit[nats]'",
            requires=("nats",),
            status="beta",
            description="Pub/sub on NATS JetStream: a durable consumer per app id and topic, ack after success, dead letters.",
        ),
        ComponentSpec(
            "pubsub.natsstreaming",
            f"{_PKG}.pubsub.jetstream.natsstreaming:NatsStreamingPubSub",
            install_hint="pip install 'mechakit[nats]'",
            requires=("nats",),
            status="deprecated",
            description="Deprecated NATS Streaming metadata, run on JetStream (use pubsub.jetstream).",
        ),
        ComponentSpec(
            "pubsub.aws.snssqs",
            f"{_PKG}.pubsub.aws_snssqs:SnsSqsPubSub",
            install_hint="pip install 'mechakit[aws]'",
            requires=("boto3",),
            description="Pub/sub on SNS topics fanned into one SQS queue per consumer: metadata kept, dead letters, FIFO.",
            aliases=("pubsub.snssqs",),
        ),
        ComponentSpec(
            "lock.in-memory",
            f"{_PKG}.lock.in_memory:InMemoryLockStore",
            description="Locks within one process, with expiry.",
        ),
        ComponentSpec(
            "lock.redis",
            f"{_PKG}.lock.redis:RedisLockStore",
            install_hint="pip install 'mechakit[redis]'",
            requires=("redis",),
            description="Locks in Redis (SET NX PX), standalone or Sentinel.",
        ),
        ComponentSpec(
            "configuration.in-memory",
            f"{_PKG}.configuration.in_memory:InMemoryConfigurationStore",
            status="alpha",
            description="Configuration items held in process memory, with subscriptions.",
        ),
        ComponentSpec(
            "configuration.redis",
            f"{_PKG}.configuration.redis:RedisConfigurationStore",
            install_hint="pip install 'mechakit[redis]'",
            requires=("redis",),
            description="Configuration items as 'value||version' strings, watched by keyspace events.",
        ),
        ComponentSpec(
            "configuration.postgresql",
            f"{_PKG}.configuration.postgresql:PostgreSQLConfigurationStore",
            install_hint="pip install 'mechakit[postgresql]'",
            requires=("psycopg", "psycopg_pool"),
            description="Configuration items as table rows, watched through LISTEN/NOTIFY.",
            aliases=("configuration.postgres",),
        ),
        ComponentSpec(
            "secretstores.local.file",
            f"{_PKG}.secretstores.local_file:LocalFileSecretStore",
            description="Secrets from a JSON file (development use).",
        ),
        ComponentSpec(
            "secretstores.local.env",
            f"{_PKG}.secretstores.local_env:LocalEnvSecretStore",
            description="Secrets from environment variables (development use).",
        ),
        ComponentSpec(
            "secretstores.hashicorp.vault",
            f"{_PKG}.secretstores.hashicorp_vault:VaultSecretStore",
            install_hint="pip install 'mechakit[vault]'",
            requires=("hvac",),
            description="Secrets from a HashiCorp Vault (or OpenBao) KV engine, v2 or v1.",
        ),
        ComponentSpec(
            "secretstores.aws.secretsmanager",
            f"{_PKG}.secretstores.aws_secretsmanager:SecretsManagerSecretStore",
            install_hint="pip install 'mechakit[aws]'",
            requires=("boto3",),
            description="Secrets from AWS Secrets Manager, by version id or stage.",
            aliases=("secretstores.aws.secretmanager",),
        ),
        ComponentSpec(
            "secretstores.aws.parameterstore",
            f"{_PKG}.secretstores.aws_parameterstore:ParameterStoreSecretStore",
            install_hint="pip install 'mechakit[aws]'",
            requires=("boto3",),
            description="Secrets from AWS SSM Parameter Store, decrypted, under an optional prefix.",
        ),
        ComponentSpec(
            "bindings.localstorage",
            f"{_PKG}.bindings.localstorage:LocalStorageBinding",
            description="Files under a root folder: create, get, delete, list.",
        ),
        ComponentSpec(
            "bindings.redis",
            f"{_PKG}.bindings.redis:RedisBinding",
            install_hint="pip install 'mechakit[redis]'",
            requires=("redis",),
            description="An output binding for Redis keys: create, get, delete, increment.",
        ),
        ComponentSpec(
            "bindings.postgresql",
            f"{_PKG}.bindings.postgresql:PostgreSQLBinding",
            install_hint="pip install 'mechakit[postgresql]'",
            requires=("psycopg", "psycopg_pool"),
            aliases=("bindings.postgres",),
            description="An output binding that runs SQL with bound parameters: exec, query, close.",
        ),
        ComponentSpec(
            "bindings.aws.s3",
            f"{_PKG}.bindings.aws_s3:S3Binding",
            install_hint="pip install 'mechakit[aws]'",
            requires=("boto3",),
            description="An output binding for S3 objects: create, get, delete, list, presign.",
        ),
        ComponentSpec(
            "bindings.cron",
            f"{_PKG}.bindings.cron:CronBinding",
            description="An input binding that fires on a cron schedule or @every interval.",
        ),
        ComponentSpec(
            "bindings.http",
            f"{_PKG}.bindings.http:HTTPBinding",
            description="An output binding that sends HTTP requests.",
            requires=("httpx",),
            install_hint="pip install 'mechakit[http]'",
        ),
    ]
