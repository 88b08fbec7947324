"""A TCP proxy that adds network latency: every request/response exchange through it takes ``rtt_ms`` longer.

Model: client -> server chunks are forwarded at once; each server -> client chunk is written to the
client ``rtt_ms`` after it arrived, so a request/response exchange (client -> server -> client) gains
``rtt_ms``, the same as two one-way delays of ``rtt_ms / 2`` would give (one timer per exchange instead
of two keeps asyncio's timer lateness, up to ~1 ms per timer, out of the figure). Chunks are delayed,
not serialised: a stream of chunks (a COPY's rows, pipelined statements, a large result) keeps its
throughput and only arrives ``rtt_ms`` later, as on a real long link without a bandwidth limit. Order within a connection is kept (one FIFO per direction), half-closes
are forwarded (EOF from one side becomes ``write_eof`` on the other after the queued data), a reset
on either side closes both, and each direction holds at most ``QUEUE_CHUNKS`` chunks before it stops
reading (back-pressure instead of unbounded memory).

It counts, per connection and in total, the *exchanges*: how many times the traffic turned from
client -> server to server -> client, i.e. the round trips a client waited for (a COPY stream of
many chunks answered once counts one; ``n`` un-pipelined statements count ``n``).

From Python (runs its own event loop in a background thread)::

    with LatencyProxy("127.0.0.1", 5433, rtt_ms=10) as proxy:
        url = proxy.conninfo("postgresql://postgres@127.0.0.1:5433/db")   # same URL, via the proxy
        ...
        print(proxy.stats())

From the command line (prints the port it listens on, runs until Ctrl-C, then prints its counters)::

    ./dev run python bench/latency_proxy.py --target 127.0.0.1:5433 --rtt-ms 10 [--listen 127.0.0.1:6543]
    ./dev run python bench/latency_proxy.py --self-check      # echo-server check of order, half-close, delay
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psycopg

QUEUE_CHUNKS = 256
READ_BYTES = 256 * 1024


@dataclasses.dataclass
class ConnStats:
    """Counters of one proxied connection (updated by the proxy's event loop only)."""
    bytes_up: int = 0       # client -> server
    bytes_down: int = 0     # server -> client
    chunks_up: int = 0
    chunks_down: int = 0
    exchanges: int = 0      # client -> server turns answered by server -> client
    _last: str = ""

    def saw(self, direction: str, n: int) -> None:
        if direction == "up":
            self.bytes_up += n
            self.chunks_up += 1
        else:
            self.bytes_down += n
            self.chunks_down += 1
            if self._last == "up":
                self.exchanges += 1
        self._last = direction


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    connections: int
    bytes_up: int
    bytes_down: int
    exchanges: int
    per_connection: tuple[int, ...]   # exchanges of each connection, in the order they were opened

    def __sub__(self, other: ProxyStats) -> ProxyStats:
        """Counters accumulated since ``other`` was taken (connections opened since then)."""
        return ProxyStats(self.connections - other.connections, self.bytes_up - other.bytes_up,
                          self.bytes_down - other.bytes_down, self.exchanges - other.exchanges,
                          self.per_connection[other.connections:])


class LatencyProxy:
    """Forward ``listen_host:listen_port`` (0: a free port) to ``target_host:target_port`` with added RTT."""

    def __init__(self, target_host: str, target_port: int, rtt_ms: float = 0.0, *,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms must be at least 0, got {rtt_ms}")
        self.target = (target_host, int(target_port))
        self.rtt_ms = float(rtt_ms)
        self.listen = (listen_host, int(listen_port))
        self.port: int | None = None
        self._conns: list[ConnStats] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def for_conninfo(cls, conninfo: str, rtt_ms: float = 0.0) -> LatencyProxy:
        """A proxy in front of the TCP server a libpq connection string names."""
        d = psycopg.conninfo.conninfo_to_dict(conninfo)
        return cls(d.get("host") or "127.0.0.1", int(d.get("port") or 5432), rtt_ms)

    def conninfo(self, conninfo: str) -> str:
        """``conninfo`` with host and port replaced by the proxy's."""
        if self.port is None:
            raise RuntimeError("the proxy is not running")
        return psycopg.conninfo.make_conninfo(conninfo, host=self.listen[0], port=str(self.port))

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LatencyProxy:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, *self.listen))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"latency-proxy-{self.rtt_ms:g}ms", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop = self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> ProxyStats:
        conns = list(self._conns)
        return ProxyStats(len(conns), sum(c.bytes_up for c in conns), sum(c.bytes_down for c in conns),
                          sum(c.exchanges for c in conns), tuple(c.exchanges for c in conns))

    # -- the proxying ------------------------------------------------------------------------------

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        swriter = None
        try:
            try:
                sreader, swriter = await asyncio.open_connection(*self.target)
            except OSError:
                return
            for w in (cwriter, swriter):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stats = ConnStats()
            self._conns.append(stats)
            # The whole round trip on the way back: one timer per exchange (asyncio wakes up to ~1 ms late per
            # timer, so two half-delays would add twice that), the same added time per request/response.
            pumps = {asyncio.create_task(self._pump(creader, swriter, 0.0, stats, "up")),
                     asyncio.create_task(self._pump(sreader, cwriter, self.rtt_ms / 1000.0, stats, "down"))}
            try:
                done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass                # the proxy is stopping; a task ending cancelled would be logged by asyncio
        finally:
            for w in (cwriter, swriter):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                    stats: ConnStats, direction: str) -> None:
        """Copy reader -> writer, each chunk ``delay`` seconds after it arrived; forward EOF as a half-close."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)

        async def deliver() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        async def receive() -> None:
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    await queue.put(None)
                    return
                stats.saw(direction, len(data))
                await queue.put((loop.time() + delay, data))

        tasks = {asyncio.create_task(receive()), asyncio.create_task(deliver())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class ProxyProcess:
    """The same proxy in a child process (this file's CLI), with :class:`LatencyProxy`'s interface.

    In-process, the proxy's thread shares the GIL with the client: while a client thread runs Python
    code the proxy waits for the GIL (up to ``sys.getswitchinterval()``, 5 ms) before it forwards a
    due chunk, which adds latency the network would not. A benchmark with CPU-busy client threads
    should use this. :meth:`stats` is only available after :meth:`stop`.
    """

    def __init__(self, target_host: str, target_port: int, rtt_ms: float = 0.0, *,
                 listen_host: str = "127.0.0.1") -> None:
        self.target, self.rtt_ms, self.listen = (target_host, int(target_port)), float(rtt_ms), (listen_host, 0)
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._stats: ProxyStats | None = None

    for_conninfo = classmethod(LatencyProxy.for_conninfo.__func__)
    conninfo = LatencyProxy.conninfo

    def start(self) -> ProxyProcess:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--json", "--target", f"{self.target[0]}:{self.target[1]}",
             "--rtt-ms", str(self.rtt_ms), "--listen", f"{self.listen[0]}:0"],
            stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError(f"the proxy process exited with {self._proc.returncode} before listening")
        self.port = json.loads(line)["port"]
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)
        out, _ = self._proc.communicate(timeout=30)
        self._proc = None
        d = json.loads(out.strip().splitlines()[-1])
        d["per_connection"] = tuple(d["per_connection"])
        self._stats = ProxyStats(**d)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> ProxyStats:
        if self._stats is None:
            raise RuntimeError("the proxy process's counters are read when it stops")
        return self._stats


# -- command line ----------------------------------------------------------------------------------

def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def self_check(rtt_ms: float = 20.0, connections: int = 50) -> None:
    """Echo server behind the proxy: bytes and order kept, half-close forwarded, RTT added, many connections."""
    srv = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(b"<eof>")          # only after the client half-closed: proves EOF was forwarded

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    errors: list[str] = []
    with LatencyProxy("127.0.0.1", srv.getsockname()[1], rtt_ms) as proxy:
        def client(i: int) -> None:
            payload = b"".join(os.urandom(1 + (i * 7919 + k) % 5000) for k in range(40))
            with socket.create_connection(("127.0.0.1", proxy.port)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t0 = time.perf_counter()
                s.sendall(b"x")
                first = s.recv(1)
                rtt = (time.perf_counter() - t0) * 1000
                if first != b"x" or rtt < rtt_ms * 0.95:
                    errors.append(f"conn {i}: first echo {first!r} after {rtt:.1f} ms (want >= {rtt_ms} ms)")
                for k in range(0, len(payload), 3000):
                    s.sendall(payload[k:k + 3000])
                s.shutdown(socket.SHUT_WR)
                got = b""
                while data := s.recv(65536):
                    got += data
                if got != payload + b"<eof>":
                    errors.append(f"conn {i}: echoed {len(got)} bytes, want {len(payload) + 5} in order")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = proxy.stats()
    srv.close()
    if errors:
        raise SystemExit("self-check failed: " + "; ".join(errors[:5]))
    print(f"self-check ok: {connections} concurrent connections at {rtt_ms:g} ms, {st.bytes_up:,} bytes each way "
          f"in order, half-close forwarded, {st.exchanges} exchanges counted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="host:port to forward to (e.g. the local target server)")
    ap.add_argument("--rtt-ms", type=float, default=10.0, help="added round-trip time, ms (on the server -> client leg)")
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (port 0: a free one)")
    ap.add_argument("--self-check", action="store_true", help="check the proxy against an echo server and exit")
    ap.add_argument("--json", action="store_true", help="print the port and, at exit, the counters as JSON lines")
    args = ap.parse_args()
    if args.self_check:
        self_check(args.rtt_ms)
        return
    if not args.target:
        ap.error("--target host:port is required")
    host, port = _hostport(args.target)
    lhost, lport = _hostport(args.listen)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LatencyProxy(host, port, args.rtt_ms, listen_host=lhost, listen_port=lport) as proxy:
        if args.json:
            print(json.dumps({"port": proxy.port}), flush=True)
        else:
            print(f"listening on {lhost}:{proxy.port} -> {host}:{port}, +{args.rtt_ms:g} ms per round trip", flush=True)
        stop.wait()
        st = proxy.stats()
    if args.json:
        print(json.dumps(dataclasses.asdict(st)), flush=True)
        return
    print(f"{st.connections} connections, {st.exchanges:,} exchanges, {st.bytes_up:,} bytes up, "
          f"{st.bytes_down:,} bytes down")


if __name__ == "__main__":
    main()
