"""The REST server (`python -m tfrec_proxy.server`): real server processes on free
loopback ports, real HTTP requests (httpx). Every route and error code, TF Serving
format round trips for a SUR and a MUR run, batching, a small load test, and a
version hot swap under load with no failed request; plus the batcher and the request
parser (context inputs) in-process."""

import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from tfrec_proxy.server.batching import DirectRunner, DynamicBatcher, OverloadedError
from tfrec_proxy.server.loadtest import percentile, run_load
from tfrec_proxy.server.protocol import (InputSpec, ModelInputs, RequestError, parse_predict,
                                         parse_recommend)

from conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"on (http://127\.0\.0\.1:\d+)/v1/models/(\S+) \(")
MAX_BATCH, MAX_BYTES = 16, 20_000


class Server:
    """A `python -m tfrec_proxy.server` process; its output goes to files."""

    def __init__(self, folder: Path, run: Path, *flags: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tfrec_proxy.server", "--run", str(run), "--port", "0",
                 *flags], stdout=out, stderr=err, cwd=ROOT)
        self.base = self.name = None

    def wait(self, timeout: float = 240.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY.search(self.out.read_text())
            if match:
                self.base, self.name = match.groups()
                break
            assert self.process.poll() is None, self.err.read_text()[-3000:]
            time.sleep(0.2)
        assert self.base, f"no ready line: {self.err.read_text()[-3000:]}"
        while httpx.get(f"{self.base}/v1/models/{self.name}").status_code != 200:
            time.sleep(0.1)  # pragma: no cover - answers as soon as it listens
        return self

    def url(self, tail: str = "", name: str = None) -> str:
        return f"{self.base}/v1/models/{name or self.name}{tail}"

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung shutdown
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="module")
def env(trained_run, tmp_path_factory):
    """Server A: a versioned base path (version 1 = the SUR run), batching on, named
    `recsys`; server B: the MUR run folder itself, batching off. A starts while the MUR
    run trains."""
    from tfrec_proxy.serving import load_run
    from tfrec_proxy.training import train

    root = tmp_path_factory.mktemp("server")
    sur = trained_run[1]
    shutil.copytree(sur, root / "models" / "1")
    servers = []
    try:
        servers.append(Server(root / "a", root / "models", "--model-name", "recsys",
                              "--max-batch-size", str(MAX_BATCH), "--batch-timeout-ms", "5",
                              "--max-request-bytes", str(MAX_BYTES), "--poll-interval-s",
                              "0.2"))
        config = tiny_config(epochs=1)
        config.model.extraction, config.model.num_interests = "mur", 2
        mur = train(config, output_dir=root / "runs", run_name="mur", verbose=0).run_dir
        servers.append(Server(root / "b", mur, "--no-batching", "--poll-interval-s", "0"))
        namespace = SimpleNamespace(root=root, sur=load_run(sur), mur=load_run(mur),
                                    mur_dir=mur, a=servers[0].wait(), b=servers[1].wait())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    yield namespace
    codes = [server.stop() for server in servers]  # both, whatever happens
    for server, code in zip(servers, codes):
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit -15).
        assert code in (0, -15), server.err.read_text()[-3000:]
        log = server.err.read_text()
        assert "Application shutdown complete" in log, log[-3000:]
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def _post(url, body=None, content=None):
    return httpx.post(url, json=body, content=content, timeout=60)


def _expected(run, histories, k, index=None):
    ids, scores = run.recommend(histories, k=k, index=index)
    return ids.tolist(), scores


def test_binds_loopback_and_names_the_model(env):
    assert env.a.base.startswith("http://127.0.0.1:") and env.a.name == "recsys"
    assert env.b.name == "mur"  # the run folder's name


def test_status(env):
    for server, version in ((env.a, "1"), (env.b, "1")):
        for url in (server.url(), server.url(f"/versions/{version}")):
            answer = httpx.get(url)
            assert answer.status_code == 200
            assert answer.json() == {"model_version_status": [
                {"version": version, "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}}]}


def test_metadata_lists_the_retrieval_signatures(env):
    answer = httpx.get(env.a.url("/metadata"))
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
    body = answer.json()
    assert body["model_spec"] == {"name": "recsys", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["brute_force", "scann", "serving_default"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["history"]["dtype"] == "DT_INT64"
    assert [d["size"] for d in default["inputs"]["history"]["tensor_shape"]["dim"]] == ["-1",
                                                                                       "-1"]
    assert default["inputs"]["k"] == {"dtype": "DT_INT32", "name": "k:0", "tensor_shape": {
        "dim": [], "unknown_rank": False}}
    assert {name: spec["dtype"] for name, spec in default["outputs"].items()} == {
        "ids": "DT_INT64", "scores": "DT_FLOAT"}
    facts = body["tfrec_proxy"]
    assert facts["max_k"] == 20 and facts["indexes"] == ["scann", "brute_force"]
    assert facts["context_features"] == [] and "path" not in facts
    assert httpx.get(env.b.url("/versions/1/metadata")).json()["tfrec_proxy"]["max_k"] == 20


@pytest.mark.parametrize("which", ["sur", "mur"])
def test_tf_serving_round_trip(env, which):
    """Columnar and row format, histories of different lengths (padded by the server,
    with padding and more than max_len ids), k per instance, each signature."""
    server, run = (env.a, env.sur) if which == "sur" else (env.b, env.mur)
    known = [int(i) for i in run.candidate_ids[:40]]
    histories = [known[:3], [known[5]], [-1, known[7], known[8]], known[10:35]]
    for signature, index in (("serving_default", None), ("brute_force", "brute_force"),
                             ("scann", "scann")):
        answer = _post(server.url(":predict"), {"signature_name": signature, "inputs": {
            "history": histories, "k": 7}})
        assert answer.status_code == 200, answer.text
        outputs = answer.json()["outputs"]
        ids, scores = _expected(run, histories, 7, index)
        assert outputs["ids"] == ids
        np.testing.assert_allclose(outputs["scores"], scores, rtol=1e-5, atol=1e-6)
    answer = _post(server.url(":predict"), {"instances": [
        {"history": histories[0], "k": 3}, {"history": histories[3]}, histories[1]]})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [len(p["ids"]) for p in predictions] == [3, 10, 10]  # k defaults to 10
    # The server runs the three rows in one call of `Run.recommend`, shortened to the
    # last max_len ids, as here: ScaNN's batched search may propose other candidates
    # for a query than a search of that query alone, or of a batch padded wider.
    width = run.manifest["max_len"]
    rows = [[i for i in h if i != -1][-width:]
            for h in (histories[0], histories[3], histories[1])]
    ids, scores = _expected(run, rows, 10)
    for row, prediction in enumerate(predictions):
        k = len(prediction["ids"])
        assert prediction["ids"] == ids[row][:k]
        np.testing.assert_allclose(prediction["scores"], scores[row][:k], rtol=1e-5,
                                   atol=1e-6)
    # One history as a flat list, inputs as a bare list: both TF Serving shorthands.
    flat = _post(server.url(":predict"), {"inputs": {"history": histories[0], "k": 7}})
    bare = _post(server.url(":predict"), {"inputs": [histories[0]]})
    assert flat.json()["outputs"]["ids"] == [_expected(run, [histories[0]], 7)[0][0]]
    assert bare.json()["outputs"]["ids"] == [_expected(run, [histories[0]], 10)[0][0]]


def test_recommend_route(env):
    run = env.sur
    known = [int(i) for i in run.candidate_ids[:10]]
    answer = _post(env.a.url(":recommend"), {"history": known[:3], "k": 5})
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
    ids, scores = run.recommend([known[:3]], k=5)
    assert answer.json()["items"] == ids[0].tolist()
    np.testing.assert_allclose(answer.json()["scores"], scores[0], rtol=1e-5, atol=1e-6)
    answer = _post(env.a.url("/versions/1:recommend"), {
        "history": known[:3], "k": 4, "index": "brute_force", "exclude_seen": True})
    ids, _ = run.recommend([known[:3]], k=4, index="brute_force", exclude_seen=True)
    assert answer.json()["items"] == ids[0].tolist()
    assert not set(answer.json()["items"]) & set(known[:3])
    unknown = max(known) + 10_000  # lenient by default, refused with strict
    assert _post(env.b.url(":recommend"), {"history": [known[0], unknown]}).status_code == 200
    refused = _post(env.b.url(":recommend"), {"history": [known[0], unknown], "strict": True})
    assert refused.status_code == 400 and str(unknown) in refused.json()["error"]


LONG = list(range(1, 30))


@pytest.mark.parametrize("tail, body, status, message", [
    (":predict", b'{"inputs": {"history": [[3, ', 400, "malformed JSON"),
    (":predict", b'{"inputs": {"history": [[3, NaN]]}}', 400, "NaN is not valid JSON"),
    (":predict", b"", 400, "body is empty"),
    (":predict", b"\xff\xfe\x00", 400, "malformed JSON"),
    (":predict", b"[1, 2]", 400, "must be a JSON object"),
    (":predict", b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),
    (":predict", {"instances": [[3]], "inputs": [[3]]}, 400, "exactly one of"),
    (":predict", {"signature_name": "serving_default"}, 400, "exactly one of"),
    (":predict", {"instance": [[3]]}, 400, "unknown field(s) ['instance']"),
    (":predict", {"signature_name": "nope", "inputs": [[3]]}, 400, "signature_name"),
    (":predict", {"inputs": {"history": [[3]], "k": 0}}, 400, "inputs.k: k=0 is out of range"),
    (":predict", {"inputs": {"history": [[3]], "k": 21}}, 400, "k=21 is out of range"),
    (":predict", {"inputs": {"history": [[3]], "k": "10"}}, 400, "inputs.k must be an integer"),
    (":predict", {"inputs": {"history": [[3]], "k": True}}, 400, "inputs.k must be an integer"),
    (":predict", {"inputs": {"history": [[3]], "k": [5]}}, 400, "inputs.k must be one integer"),
    (":predict", {"inputs": {"history": 3}}, 400, "inputs.history must be a list"),
    (":predict", {"inputs": {"history": [[3], 4]}}, 400, "inputs.history must be a list of"),
    (":predict", {"inputs": {"history": []}}, 400, "inputs.history is empty"),
    (":predict", {"inputs": {"history": [[3], [-1, -1]]}}, 400,
     "inputs.history[1]: only padding"),
    (":predict", {"inputs": {"history": [[3], [2 ** 64]]}}, 400,
     "inputs.history[1]: item id 18446744073709551616 is outside the int64 range"),
    (":predict", {"inputs": {"history": [[3]], "user_id": [1]}}, 400, "unknown field(s) "
     "['user_id'] in inputs"),
    (":predict", {"instances": [{"history": [3]}, {"history": [3, "x"]}]}, 400,
     "instances[1].history: item id 'x' is not an integer"),
    (":predict", {"instances": [{"history": [3], "k": 99}]}, 400, "instances[0].k: k=99"),
    (":predict", {"instances": [{"k": 3}]}, 400, "instances[0] has no 'history'"),
    (":predict", {"instances": [3]}, 400, "instances[0] must be an object"),
    (":predict", {"instances": [[]]}, 400, "instances[0].history: empty"),
    (":predict", {"instances": [[3]] * (MAX_BATCH + 1)}, 400, "more than this server's max "
     "batch size 16"),
    (":predict", {"inputs": {"history": [LONG] * 1000}}, 413, "exceeds this server's limit"),
    (":recommend", {"history": [3], "k": 25}, 400, "k: k=25 is out of range"),
    (":recommend", {"k": 3}, 400, "no 'history'"),
    (":recommend", {"history": [3], "index": "annoy"}, 400, "index \"annoy\" is not an index"),
    (":recommend", {"history": [3], "exclude_seen": 1}, 400, "exclude_seen must be true or"),
    (":recommend", {"history": [3], "strict": "yes"}, 400, "strict must be true or false"),
    (":recommend", {"history": LONG, "k": 10, "exclude_seen": True}, 400,
     "history: exclude_seen needs k + seen items = 10 + "),
    (":recommend", {"history": [3], "colour": "red"}, 400, "unknown field(s) ['colour']"),
    ("/versions/7:predict", {"inputs": [[3]]}, 404,
     "Servable not found for request: Specific(recsys, 7)"),
])
def test_bad_requests_are_4xx_naming_the_field(env, tail, body, status, message):
    if isinstance(body, bytes):
        answer = _post(env.a.url(tail), content=body)
    else:
        answer = _post(env.a.url(tail), body)
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"]
    assert message in answer.json()["error"], answer.json()["error"]
    assert "Traceback" not in answer.text


def test_unknown_models_routes_and_methods(env):
    cases = [("GET", env.a.url(name="nope"), 404, "Servable not found for request: "
              "Latest(nope)"),
             ("GET", env.a.url("/metadata", name="nope"), 404, "Latest(nope)"),
             ("POST", env.a.url(":predict", name="nope"), 404, "Latest(nope)"),
             ("POST", env.a.url(":recommend", name="nope"), 404, "Latest(nope)"),
             ("GET", env.a.url("/versions/3"), 404, "Specific(recsys, 3)"),
             ("GET", env.a.url("/versions/x"), 404, "no route"),
             ("GET", env.a.url(":classify"), 404, "no route"),
             ("GET", f"{env.a.base}/", 404, "no route"),
             ("GET", env.a.url(":predict"), 405, "method GET is not allowed"),
             ("POST", env.a.url(), 405, "method POST is not allowed"),
             ("DELETE", env.a.url("/metadata"), 405, "method DELETE")]
    for method, url, status, message in cases:
        answer = httpx.request(method, url, json={} if method == "POST" else None)
        assert answer.status_code == status, (method, url, answer.text)
        assert message in answer.json()["error"], (url, answer.json())


def test_undeclared_body_over_the_limit_is_413(env):
    def chunks():  # chunked transfer: no Content-Length to check up front
        yield b'{"inputs": {"history": [['
        for _ in range(MAX_BYTES // 1000 + 1):
            yield b"3, " * 333
        yield b"3]]}}"

    answer = httpx.post(env.a.url(":predict"), content=chunks(), timeout=60)
    assert answer.status_code == 413 and "limit of 20000 bytes" in answer.json()["error"]


def test_concurrent_requests_are_batched_and_answered_correctly(env):
    run = env.sur
    known = [int(i) for i in run.candidate_ids[:60]]
    rng = np.random.default_rng(0)
    requests = [([known[j] for j in rng.integers(0, 60, rng.integers(1, 15))],
                 int(rng.integers(1, 21))) for _ in range(24)]
    before = httpx.get(f"{env.a.base}/monitoring/stats").json()

    async def send_all():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[client.post(env.a.url(":predict"), json={
                "signature_name": "brute_force", "instances": [{"history": h, "k": k}]})
                for h, k in requests])

    answers = asyncio.run(send_all())
    after = httpx.get(f"{env.a.base}/monitoring/stats").json()
    for answer, (history, k) in zip(answers, requests):
        assert answer.status_code == 200, answer.text
        ids, _ = _expected(run, [history], k, "brute_force")
        assert answer.json()["predictions"][0]["ids"] == ids[0]
    assert after["batching"] is True and after["requests"] - before["requests"] == 24
    assert after["calls"] - before["calls"] < 24  # some requests shared a model call
    assert after["max_rows"] > 1


def test_small_load_test_batching_on_and_off(env):
    """The load test in small: N requests at concurrency C, no errors, through the
    benchmark script (`--url`: the servers of this module) and `run_load`."""
    histories = [[int(i) for i in env.sur.candidate_ids[j:j + 5]] for j in range(0, 50, 5)]
    bodies = [{"instances": [{"history": h, "k": 10}]} for h in histories]
    report = run_load(env.b.url(":predict"), bodies, requests=40, concurrency=4)
    assert report["errors"] == 0 and report["requests"] == 40
    assert report["versions"] == {"1": 40} and report["latency_ms"]["p99"] > 0
    stats = httpx.get(f"{env.b.base}/monitoring/stats").json()
    assert stats["batching"] is False and stats["calls"] == stats["requests"]
    results = env.root / "serve_load.jsonl"
    out = subprocess.run([sys.executable, str(ROOT / "pipelines" / "bench_serve_load.py"),
                          "--url", env.a.url(), "--requests", "30", "--warmup", "5",
                          "--clients", "1", "4", "--results", str(results)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| on | 4 | 30 | 0 |" in out.stdout
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["mode"], r["clients"], r["errors"]) for r in records] == [("on", 1, 0),
                                                                         ("on", 4, 0)]
    assert records[0]["run"]["num_candidates"] == 200


def test_percentile():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0], 99) == 1.0 and np.isnan(percentile([], 50))


def test_hot_swap_under_load_drops_no_request(env):
    """Version 2 (the MUR run) is copied in (not atomically) while 4 clients load the
    server: it is picked up once its files settle, and no request fails."""
    known = [int(i) for i in env.sur.candidate_ids[:20]]
    bodies = [{"inputs": {"history": [known[j:j + 4], known[j + 5:j + 7]], "k": 5}}
              for j in range(10)]
    stop, report = threading.Event(), {}
    load = threading.Thread(target=lambda: report.update(run_load(
        env.a.url(":predict"), bodies, concurrency=4, stop=stop)))
    load.start()
    try:
        time.sleep(0.5)
        shutil.copytree(env.mur_dir, env.root / "models" / "2")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = httpx.get(env.a.url(), timeout=60).json()["model_version_status"]
            if status[0]["version"] == "2" and status[0]["state"] == "AVAILABLE":
                break
            time.sleep(0.2)
        assert status[0] == {"version": "2", "state": "AVAILABLE",
                             "status": {"error_code": "OK", "error_message": ""}}, status
        time.sleep(1.0)
    finally:
        stop.set()
        load.join(timeout=120)
    assert report["errors"] == 0, report["error_samples"]
    assert report["versions"].get("1", 0) > 0 and report["versions"].get("2", 0) > 0, report
    # Version 2 answers as the MUR run does; version 1 is gone.
    histories = bodies[0]["inputs"]["history"]
    answer = _post(env.a.url(":predict"), bodies[0])
    assert answer.headers["x-model-version"] == "2"
    assert answer.json()["outputs"]["ids"] == _expected(env.mur, histories, 5)[0]
    assert _post(env.a.url("/versions/1:predict"), bodies[0]).status_code == 404


def test_module_entry_point_flags_and_startup_errors(tmp_path):
    from tfrec_proxy.server.__main__ import build_parser

    args = build_parser().parse_args(["--run", "x", "--no-batching", "--model-name", "m",
                                      "--max-batch-size", "8", "--batch-timeout-ms", "1.5"])
    assert (args.run, args.host, args.port, args.batching, args.max_batch_size,
            args.batch_timeout_ms, args.model_name) == ("x", "127.0.0.1", 8501, False, 8,
                                                        1.5, "m")
    out = subprocess.run([sys.executable, "-m", "tfrec_proxy.server", "--run",
                          str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error:" in out.stderr and "missing" in out.stderr
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "tfrec_proxy.server", "--run",
                          str(tmp_path / "empty")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "numbered version folders" in out.stderr


# In-process: the batcher and the request parser.

def test_dynamic_batcher_merges_concurrent_requests_by_key():
    calls = []

    def process(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{item}" for item in items]

    async def main():
        batcher = DynamicBatcher(process, max_batch_size=4, timeout_ms=50, num_threads=1)
        results = await asyncio.gather(*[batcher.submit("a" if i % 3 else "b", i)
                                         for i in range(9)])
        await batcher.close()
        return results, batcher.stats.as_dict()

    results, stats = asyncio.run(main())
    assert results == [f"{'a' if i % 3 else 'b'}:{i}" for i in range(9)]
    assert sorted((key, len(items)) for key, items in calls) == [("a", 2), ("a", 4),
                                                                 ("b", 3)]
    assert stats["calls"] == 3 and stats["rows"] == 9 and stats["max_rows"] == 4


def test_a_failing_request_fails_alone():
    def process(key, items):
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return [item * 2 for item in items]

    async def main():
        batcher = DynamicBatcher(process, max_batch_size=8, timeout_ms=50)
        results = await asyncio.gather(*[batcher.submit("k", i) for i in (1, -1, 3)],
                                       return_exceptions=True)
        await batcher.close()
        direct = DirectRunner(process, max_queued_rows=1)
        with pytest.raises(OverloadedError):
            await direct.submit("k", 1, rows=2)
        assert await direct.submit("k", 4) == 8
        await direct.close()
        return results

    results = asyncio.run(main())
    assert results[0] == 2 and results[2] == 6 and isinstance(results[1], ValueError)


def _inputs(context=None):
    return ModelInputs(max_k=20, indexes=["scann", "brute_force"], context=context or {},
                       max_len=3, check=lambda *args, **kwargs: None)


def test_parser_shortens_histories_to_what_the_tower_reads():
    query, kind = parse_predict({"inputs": {"history": [[-1, 1, 2, 3, 4, -1], [5]],
                                            "k": 4}}, _inputs(), 8)
    assert kind == "columnar" and query.histories == [[2, 3, 4], [5]] and query.ks == [4, 4]
    assert query.index == "scann" and query.batch_key() == ("scann", False, None)
    query = parse_recommend({"history": [1, 2, 3, 4], "exclude_seen": True, "k": 2},
                            _inputs())
    assert query.histories == [[1, 2, 3, 4]] and query.batch_key() == ("scann", True, 2)


def test_parser_reads_context_inputs_such_as_user_id():
    """RAM-style runs take `user_id` (int64, one per history); missing -> -1 (u = 0)."""
    inputs = _inputs({"user_id": InputSpec(np.dtype("int64"))})
    query, _ = parse_predict({"instances": [{"history": [1], "user_id": 12}, [2]]}, inputs, 8)
    assert query.context["user_id"].tolist() == [12, -1]
    query, _ = parse_predict({"inputs": {"history": [[1], [2]], "user_id": [7, 8]}}, inputs, 8)
    assert query.context["user_id"].dtype == np.int64 and query.context["user_id"].tolist() == [
        7, 8]
    query = parse_recommend({"history": [1], "user_id": 5}, inputs)
    assert query.context["user_id"].tolist() == [5]
    for body, message in [
            ({"inputs": {"history": [[1], [2]], "user_id": [7]}}, "inputs.user_id must be a "
             "list with one value per history (2)"),
            ({"inputs": {"history": [[1]], "user_id": 7}}, "inputs.user_id must be a list"),
            ({"instances": [{"history": [1], "user_id": "u1"}]}, "instances[0].user_id must "
             "be of type int64"),
            ({"instances": [{"history": [1], "user_id": True}]}, "must be of type int64"),
            ({"instances": [{"history": [1], "user_id": [1, 2]}]}, "must have shape []"),
            ({"instances": [{"history": [1], "user_id": 2 ** 63}]}, "outside the int64")]:
        with pytest.raises(RequestError, match=re.escape(message)):
            parse_predict(body, inputs, 8)
    required = _inputs({"timestamp": InputSpec(np.dtype("float32"))})
    with pytest.raises(RequestError, match="missing input 'inputs.timestamp'"):
        parse_predict({"inputs": [[1]]}, required, 8)


def test_registry_waits_for_settled_files_retries_failures_and_falls_back(tmp_path,
                                                                         monkeypatch):
    """The hot-swap policy, with a stand-in loader (no TensorFlow)."""
    from tfrec_proxy.server import models

    def load(path, version=1):
        if not (Path(path) / "ok").exists():
            raise ValueError("incomplete run folder")
        return SimpleNamespace(version=version, fingerprint=models.folder_fingerprint(path))

    monkeypatch.setattr(models.ServedModel, "load", staticmethod(load))
    base = tmp_path / "recsys"
    for name in ("manifest.json", "ok"):
        (base / "1").mkdir(parents=True, exist_ok=True)
        (base / "1" / name).write_text("")
    registry = models.ModelRegistry(base, poll_interval_s=0)
    assert (registry.name, registry.current.version, registry.poll()) == ("recsys", 1, False)
    (base / "2").mkdir()
    (base / "2" / "manifest.json").write_text("")
    assert not registry.poll()  # first sight: waits one poll for the files to settle
    assert not registry.poll()  # settled but broken: version 1 keeps serving
    assert [(s["version"], s["state"]) for s in registry.status()] == [("1", "AVAILABLE"),
                                                                        ("2", "END")]
    assert "incomplete run folder" in registry.status()[1]["status"]["error_message"]
    assert not registry.poll()  # the same files are not retried
    (base / "2" / "ok").write_text("")
    assert not registry.poll()  # changed: settle first
    assert registry.poll() and registry.current.version == 2
    assert [s["version"] for s in registry.status()] == ["2"]
    shutil.rmtree(base / "2")
    assert not registry.poll()  # gone once: perhaps a folder being replaced
    assert registry.poll() and registry.current.version == 1  # gone twice: fall back
    plain = tmp_path / "run"  # a run folder: version 1, bumped by each reload
    plain.mkdir()
    (plain / "manifest.json").write_text("{}")
    (plain / "ok").write_text("")
    registry = models.ModelRegistry(plain, name="demo", poll_interval_s=0)
    assert (registry.name, registry.current.version, registry.poll()) == ("demo", 1, False)
    (plain / "added-items.npz").write_text("")  # e.g. `tfrec-proxy add-items`
    assert not registry.poll() and registry.poll() and registry.current.version == 2
    with pytest.raises(ValueError, match="numbered version folders"):
        models.ModelRegistry(tmp_path / "run" / "..", poll_interval_s=0)
