#!/usr/bin/env python3
"""A loopback TCP proxy that adds a fixed delay to every request (issue 13, Deliver 5).

    scripts/bench-delay-proxy.py --listen 127.0.0.1:0 --to 127.0.0.1:8200 --delay-ms 50

A production Vault answers a sign in tens of milliseconds (raft commit, network); the
bench's dev server answers in ~2 ms. The proxy holds the first bytes of each request for
--delay-ms before forwarding them: a request is whatever the client sends after the
connection opened or after the server last answered, so keep-alive connections pay the
delay once per request, not once per connection, and a request whose body comes in
several writes pays it once. It forwards bytes as they are (plain HTTP or TLS alike).

Prints `listening HOST:PORT` on stdout once bound; runs until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import signal
import sys


async def pump(reader, writer, delay, state, is_request):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if is_request:
                if state["idle"]:
                    state["idle"] = False
                    state["requests"] += 1
                    await asyncio.sleep(delay)
            else:
                state["idle"] = True
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - closing a broken socket
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--to", required=True, help="HOST:PORT of the server")
    ap.add_argument("--delay-ms", type=float, required=True)
    args = ap.parse_args()
    lhost, lport = args.listen.rsplit(":", 1)
    thost, tport = args.to.rsplit(":", 1)
    delay = args.delay_ms / 1000.0
    totals = {"requests": 0}

    async def handle(creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection(thost, int(tport))
        except OSError:
            cwriter.close()
            return
        state = {"idle": True, "requests": 0}
        await asyncio.gather(
            pump(creader, swriter, delay, state, True),
            pump(sreader, cwriter, delay, state, False),
        )
        totals["requests"] += state["requests"]

    server = await asyncio.start_server(handle, lhost, int(lport))
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()
    print(f"delayed_requests={totals['requests']}", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
