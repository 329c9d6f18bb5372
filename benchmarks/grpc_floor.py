"""The floor for :mod:`.sidecar_cpu_bench`: a minimal grpcio server answering Dapr's
``GetState`` with one Redis ``GET`` (redis-py), nothing else.

    .venv/bin/python -m benchmarks.grpc_floor --mode aio|sync --port P --redis HOST:PORT

``aio``: ``grpc.aio`` with an async handler over ``redis.asyncio``; ``sync``: ``grpc.server``
with a thread pool and a blocking ``redis.Redis``. What it costs per call is what the server
stack costs before any sidecar code runs.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2


def serve_sync(port: int, host: str, redis_port: int) -> None:
    import redis

    client = redis.Redis(host=host, port=redis_port)

    class Floor(dapr_pb2_grpc.DaprServicer):
        def GetState(self, request: Any, context: Any) -> Any:
            data: bytes | None = client.get(request.key)  # type: ignore[assignment]
            return state_pb2.GetStateResponse(data=data or b"")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    dapr_pb2_grpc.add_DaprServicer_to_server(Floor(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve_aio(port: int, host: str, redis_port: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=host, port=redis_port)

    class Floor(dapr_pb2_grpc.DaprServicer):
        async def GetState(self, request: Any, context: Any) -> Any:
            data: bytes | None = await client.get(request.key)  # type: ignore[assignment]
            return state_pb2.GetStateResponse(data=data or b"")

    server = grpc.aio.server()
    dapr_pb2_grpc.add_DaprServicer_to_server(Floor(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("aio", "sync"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, redis_port = args.redis.rpartition(":")
    if args.mode == "sync":
        serve_sync(args.port, host, int(redis_port))
    else:
        asyncio.run(serve_aio(args.port, host, int(redis_port)))


if __name__ == "__main__":
    main()
