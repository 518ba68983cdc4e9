"""Benchmark: the REST server (`tfrec_proxy.server`) under loopback load, dynamic
batching on vs off.

One server process per mode (`--modes on off`: `--batching` / `--no-batching`, the
other settings equal) serves the same run on a free loopback port; both run at once
and are measured in alternation, so drifting load from other processes hits both
alike. For each number of concurrent clients C of `--clients` and each mode: `--warmup`
requests, then `--requests` requests from C closed-loop clients (each sends its next
request when the last is answered; `tfrec_proxy.server.loadtest.run_load`, httpx),
every one a TF Serving row-format `:predict` of `--rows` histories (random catalogue
ids, 1 to max_len long, fixed `--seed`) and k = `--k`. Reported per (mode, C):
throughput (requests/s), p50/p99 latency, errors (any answer but 200; there must be
none), and the server's mean histories per model call (`GET /monitoring/stats`,
counted over the measured requests only); and the throughput ratio batching on / off.
The clients run in this process on the same machine, so client and server share the
CPUs: on a small machine the figures are a lower bound of what the server does alone.

Without `--run` a run is trained first (`pipelines/configs/synthetic_default.json`
for one epoch: 1,000 items, d = 16; `--quick`: a tiny 200-item run) into a temporary
folder. `--url http://HOST:PORT/v1/models/NAME` measures an already running server
instead (its batching mode read from `/monitoring/stats`).

Results: a markdown table on stdout and one JSON line per (mode, C) appended to
`pipelines/results/serve_load.jsonl` (`serve_load_quick.jsonl` with `--quick`, or
`--results PATH`). The exit status is 1 when any request failed.

Usage:
    python pipelines/bench_serve_load.py [--run DIR] [--requests 2000] \\
        [--clients 1 8 32] [--modes on off] [--rows 1] [--k 10] \\
        [--max-batch-size 64] [--batch-timeout-ms 2]
    python pipelines/bench_serve_load.py --quick          # tiny run, seconds of load
    python pipelines/bench_serve_load.py --url http://127.0.0.1:8501/v1/models/demo
"""

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods import append_result, markdown_table  # noqa: E402
from tfrec_proxy.server.loadtest import run_load  # noqa: E402

PIPELINES = Path(__file__).resolve().parent
RESULTS = PIPELINES / "results"
READY = re.compile(r"on (http://\S+/v1/models/\S+) \(")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder to serve (default: train one)")
    parser.add_argument("--url", help="an already running server's model URL "
                                      "(http://HOST:PORT/v1/models/NAME)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--modes", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--rows", type=int, default=1, help="histories per request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", help="JSON lines file (default results/serve_load.jsonl)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run, 200 requests, 1 and 8 clients")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.clients = min(args.requests, 200), 20, [1, 8]
    return args


def train_run(folder: Path, quick: bool) -> Path:
    """Trains a synthetic run through the CLI (one epoch) and returns its folder."""
    from tfrec_proxy.config import RunConfig

    config = RunConfig.from_json(PIPELINES / "configs" / "synthetic_default.json")
    config.train.epochs = 1
    if quick:
        synthetic = config.data.synthetic
        synthetic.num_users, synthetic.num_items, synthetic.num_clusters = 150, 200, 5
        synthetic.seq_len, config.data.max_len, config.export.max_k = 12, 10, 20
        config.train.batch_size, config.train.min_sequences_per_batch = 64, 8
    config.train.early_stopping_patience = 0
    config.to_json(folder / "config.json")
    subprocess.run([sys.executable, "-m", "tfrec_proxy.cli", "train", "--config",
                    str(folder / "config.json"), "--output", str(folder), "--run-name",
                    "serve_bench"], check=True, stdout=subprocess.DEVNULL)
    return folder / "serve_bench"


def get_json(url: str) -> Dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


class Server:
    """A `python -m tfrec_proxy.server` process on a free loopback port."""

    def __init__(self, run: Path, batching: bool, args: argparse.Namespace) -> None:
        command = [sys.executable, "-m", "tfrec_proxy.server", "--run", str(run), "--port",
                   "0", "--batching" if batching else "--no-batching", "--max-batch-size",
                   str(args.max_batch_size), "--batch-timeout-ms", str(args.batch_timeout_ms),
                   "--poll-interval-s", "0"]
        if args.num_threads:
            command += ["--num-threads", str(args.num_threads)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.url = None

    def wait(self) -> str:
        for line in self.process.stdout:
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                break
        if self.url is None:
            raise RuntimeError(f"the server exited ({self.process.wait()}) before serving")
        for _ in range(300):
            try:
                get_json(self.url)
                return self.url
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.url} does not answer")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def make_bodies(run_info: Dict[str, Any], ids: np.ndarray, args: argparse.Namespace
                ) -> List[Dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    max_len = int(run_info.get("max_len") or 10)
    bodies = []
    for _ in range(256):
        bodies.append({"instances": [
            {"history": rng.choice(ids, int(rng.integers(1, max_len + 1))).tolist(),
             "k": args.k} for _ in range(args.rows)]})
    return bodies


def measure(url: str, bodies: List[Dict[str, Any]], clients: int,
            args: argparse.Namespace) -> Dict[str, Any]:
    stats_url = url.split("/v1/models/")[0] + "/monitoring/stats"
    run_load(url + ":predict", bodies, requests=args.warmup, concurrency=clients)
    before = get_json(stats_url)
    report = run_load(url + ":predict", bodies, requests=args.requests, concurrency=clients)
    after = get_json(stats_url)
    calls = after["calls"] - before["calls"]
    report["mean_batch_rows"] = (after["rows"] - before["rows"]) / calls if calls else 0.0
    report["model_calls"] = calls
    report["server"] = {key: after[key] for key in
                        ("batching", "max_batch_size", "batch_timeout_ms", "num_threads")}
    return report


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    results = Path(args.results) if args.results else RESULTS / (
        "serve_load_quick.jsonl" if args.quick else "serve_load.jsonl")
    servers: Dict[str, Server] = {}
    urls: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            run = None
            if args.url:
                url = args.url.rstrip("/")
                stats = get_json(url.split("/v1/models/")[0] + "/monitoring/stats")
                urls["on" if stats["batching"] else "off"] = url
            else:
                run = Path(args.run) if args.run else train_run(Path(scratch), args.quick)
                for mode in args.modes:
                    servers[mode] = Server(run, mode == "on", args)
                for mode, server in servers.items():
                    urls[mode] = server.wait()
            metadata = get_json(next(iter(urls.values())) + "/metadata")
            run_info = metadata["tfrec_proxy"]
            ids = _catalogue_ids(run, urls, run_info)
            bodies = make_bodies(run_info, ids, args)
            records = []
            for clients in args.clients:
                for mode, url in urls.items():
                    report = measure(url, bodies, clients, args)
                    record = {"mode": mode, "clients": clients, "rows": args.rows, "k": args.k,
                              **report, "run": {key: run_info[key] for key in (
                                  "model_kind", "num_candidates", "max_len", "max_k",
                                  "indexes", "context_features")},
                              "embedding_dim": _embedding_dim(run),
                              "loadavg_1m": os.getloadavg()[0], "seed": args.seed,
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "command": " ".join(["python", *sys.argv])}
                    append_result(results, record)
                    records.append(record)
                    print(f"batching {mode}, {clients} clients: "
                          f"{report['throughput_rps']:.0f} req/s, p50 "
                          f"{report['latency_ms']['p50']:.1f} ms, p99 "
                          f"{report['latency_ms']['p99']:.1f} ms, errors {report['errors']}",
                          flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print(table(records))
    print(f"results appended to {results}")
    return 1 if any(record["errors"] for record in records) else 0


def _catalogue_ids(run: Optional[Path], urls: Dict[str, str], run_info: Dict[str, Any]
                   ) -> np.ndarray:
    """The run's item ids, or (a server elsewhere) the ids it recommends to a few
    histories."""
    if run is not None:
        with np.load(run / "candidates.npz") as candidates:
            return candidates["ids"]
    url, found = next(iter(urls.values())) + ":recommend", {0}
    for _ in range(3):
        request = urllib.request.Request(url, data=json.dumps(
            {"history": sorted(found)[-10:], "k": run_info["max_k"]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            found |= set(json.loads(response.read())["items"])
    return np.asarray(sorted(found - {0}) or [0], np.int64)


def _embedding_dim(run: Optional[Path]) -> Optional[int]:
    manifest = run / "manifest.json" if run is not None else None
    if manifest is None or not manifest.exists():
        return None
    return json.loads(manifest.read_text()).get("embedding_dim")


def table(records: List[Dict[str, Any]]) -> str:
    """The markdown table: one row per (mode, clients), ratio on / off per clients."""
    by_key = {(r["mode"], r["clients"]): r for r in records}
    rows = []
    for record in records:
        other = by_key.get(("off", record["clients"]))
        ratio = (f"{record['throughput_rps'] / other['throughput_rps']:.2f}x"
                 if record["mode"] == "on" and other else "")
        rows.append([record["mode"], record["clients"], record["requests"], record["errors"],
                     f"{record['throughput_rps']:.0f}", f"{record['latency_ms']['p50']:.1f}",
                     f"{record['latency_ms']['p99']:.1f}", f"{record['mean_batch_rows']:.1f}",
                     ratio])
    return markdown_table(["batching", "clients", "requests", "errors", "req/s", "p50 ms",
                           "p99 ms", "histories/call", "on/off req/s"], rows)


if __name__ == "__main__":
    sys.exit(main())
