"""A bounded loopback load generator for the server (httpx, asyncio).

`run_load` sends requests from `concurrency` clients, each sending its next request
as soon as the last one is answered (a closed loop, like TF Serving's load tests),
and reports throughput, latency percentiles, errors and the model versions that
answered. Used by `pipelines/bench_serve_load.py` and the tests. Its HTTP/1.1 client
is asyncio streams + h11 (uvicorn's own dependency), which is several times cheaper
per request than a general-purpose client: on a small machine the load generator
shares the CPUs with the server it measures.
"""

import asyncio
import collections
import itertools
import json
import socket
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

_ERROR_SAMPLES = 5


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_load(url: str, bodies: Sequence[Mapping[str, Any]], *, requests: Optional[int] = None,
             concurrency: int = 1, stop: Optional[threading.Event] = None,
             timeout_s: float = 60.0) -> Dict[str, Any]:
    """POSTs JSON bodies to `url` from `concurrency` concurrent clients.

    Args:
        url: e.g. `http://127.0.0.1:8501/v1/models/demo:predict`.
        bodies: Request bodies, sent in turn (cycled).
        requests: How many requests in all (None: until `stop` is set).
        concurrency: Concurrent clients (one keep-alive connection each, TCP_NODELAY).
        stop: Ends the load early (or, with `requests=None`, at all) once set.
        timeout_s: Per-request timeout; a timeout counts as an error.

    Returns:
        `requests`, `concurrency`, `errors` (non-200 answers and failures),
        `error_samples`, `seconds`, `throughput_rps`, `latency_ms` (`mean`, `p50`,
        `p90`, `p99`, `max`), `statuses` (count per HTTP status) and `versions`
        (answers per `X-Model-Version`).

    Example:

        report = run_load("http://127.0.0.1:8501/v1/models/demo:recommend",
                          [{"history": [3, 17, 42], "k": 10}], requests=200, concurrency=8)
        print(report["throughput_rps"], report["latency_ms"]["p99"], report["errors"])
    """
    if requests is None and stop is None:
        raise ValueError("run_load needs `requests` or a `stop` event.")
    return asyncio.run(_load(url, list(bodies), requests, concurrency, stop, timeout_s))


class _Connection:
    """One keep-alive HTTP/1.1 connection (asyncio streams + the h11 protocol library,
    which uvicorn also uses: a light client, so the load generator costs the shared
    CPUs far less than the server it measures)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.protocol: Any = None

    async def _open(self) -> None:
        import h11

        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout_s)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.protocol = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = self.protocol = None

    async def post(self, target: str, body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        """POSTs `body` (JSON); returns `(status, headers, body)`."""
        import h11

        if self.protocol is None:
            await self._open()
        protocol = self.protocol
        self.writer.write(
            protocol.send(h11.Request(method="POST", target=target, headers=[
                ("Host", f"{self.host}:{self.port}"), ("Content-Type", "application/json"),
                ("Content-Length", str(len(body)))]))
            + protocol.send(h11.Data(data=body)) + protocol.send(h11.EndOfMessage()))
        status, headers, chunks = 0, {}, []
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                protocol.receive_data(await asyncio.wait_for(self.reader.read(1 << 16),
                                                             self.timeout_s))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {name.decode().lower(): value.decode()
                           for name, value in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection")
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
        else:  # the server asked to close (e.g. after refusing a request)
            self.close()
        return status, headers, b"".join(chunks)


async def _load(url: str, bodies: List[Mapping[str, Any]], requests: Optional[int],
                concurrency: int, stop: Optional[threading.Event], timeout_s: float
                ) -> Dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"run_load needs an http:// URL, got {url!r}")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    encoded = [json.dumps(body).encode() for body in bodies]
    counter = itertools.count()
    latencies: List[float] = []
    statuses: Dict[str, int] = collections.Counter()
    versions: Dict[str, int] = collections.Counter()
    samples: List[str] = []

    async def client() -> None:
        connection = _Connection(parts.hostname, parts.port or 80, timeout_s)
        try:
            while stop is None or not stop.is_set():
                number = next(counter)
                if requests is not None and number >= requests:
                    return
                started = time.perf_counter()
                try:
                    code, headers, text = await connection.post(
                        target, encoded[number % len(encoded)])
                    status = str(code)
                    if code == 200:
                        versions[headers.get("x-model-version", "?")] += 1
                    elif len(samples) < _ERROR_SAMPLES:
                        samples.append(f"{status}: {text[:300].decode(errors='replace')}")
                except Exception as error:  # noqa: BLE001 - counted as a failed request
                    connection.close()
                    status = type(error).__name__
                    if len(samples) < _ERROR_SAMPLES:
                        samples.append(f"{status}: {error}")
                latencies.append((time.perf_counter() - started) * 1000.0)
                statuses[status] += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    seconds = time.perf_counter() - started
    done = len(latencies)
    return {
        "requests": done, "concurrency": concurrency,
        "errors": done - statuses.get("200", 0), "error_samples": samples,
        "seconds": seconds, "throughput_rps": done / seconds if seconds > 0 else 0.0,
        "latency_ms": {"mean": sum(latencies) / done if done else float("nan"),
                       "p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
                       "p99": percentile(latencies, 99),
                       "max": max(latencies) if latencies else float("nan")},
        "statuses": dict(statuses), "versions": dict(versions),
    }
