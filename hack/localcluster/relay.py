"""A TCP relay: ``python -m localcluster.relay LISTEN_HOST:PORT TARGET_HOST:PORT``.

The API server listens on 127.0.0.1 only. With a real node, pods reach it the standard way,
through the ``kubernetes`` Service (10.0.0.1:443): kube-proxy sends that to the advertised
address, the node's bridge IP, where this relay passes the bytes (TLS and all) on to
127.0.0.1. Nothing is exposed beyond the bridge, which has no route off this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write_eof()


async def _relay(
    host: str, port: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        target_r, target_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, target_w), _pipe(target_r, client_w))
    finally:
        for writer in (client_w, target_w):
            writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    server = await asyncio.start_server(
        lambda r, w: _relay(*target, r, w), listen[0], listen[1], reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m localcluster.relay", description=__doc__)
    parser.add_argument("listen", type=_address, help="HOST:PORT to listen on")
    parser.add_argument("target", type=_address, help="HOST:PORT to pass connections to")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.target))


if __name__ == "__main__":
    main()
