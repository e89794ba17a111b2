"""`ryla serve` binds its own socket; it must be one asyncio treats as TCP.

asyncio turns on TCP_NODELAY only for sockets whose ``proto`` is IPPROTO_TCP. A socket made with
the default proto 0 made every answer of `ryla serve` wait ~40 ms for a delayed ACK.
"""

from __future__ import annotations

import asyncio
import socket

from ryla_modal.gateway.local import bind as _bind


def test_bound_socket_is_tcp_so_accepted_connections_get_nodelay() -> None:
    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen: list[int] = []

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert sock.proto == socket.IPPROTO_TCP
    assert seen == [1]
