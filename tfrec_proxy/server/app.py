"""TF Serving's REST API for a run folder, on FastAPI + uvicorn, and `serve`.

Routes (NAME is the model name; `/versions/N` may follow it in every route):

* `GET /v1/models/NAME`: version status (`{"model_version_status": [...]}`).
* `GET /v1/models/NAME/metadata`: the signatures (`serving_default` = the run's
  default index, plus one per index) in TF Serving's `signature_def` format, and the
  run's serving facts under `"tfrec_proxy"`.
* `POST /v1/models/NAME:predict`: `{"instances": [...]}` -> `{"predictions": [...]}`
  or `{"inputs": {...}}` -> `{"outputs": {"ids": [[...]], "scores": [[...]]}}`.
* `POST /v1/models/NAME:recommend`: `{"history": [3, 17, 42], "k": 10}` ->
  `{"items": [...], "scores": [...]}`.
* `GET /monitoring/stats`: batching settings and counters (model calls, requests,
  histories, mean and largest batch).

Every error is `{"error": "..."}`: 400 for a bad request (naming the field), 404 for
an unknown model, version or route, 405 for a wrong method, 413 for a body over
`max_request_bytes`, 503 when overloaded; a 500 (a server fault, logged, never a
stack trace) is never the answer to bad input. Successful predictions carry the
version that answered in the `X-Model-Version` header.
"""

import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from tfrec_proxy.history_input import UnknownItemsWarning
from tfrec_proxy.server.batching import DirectRunner, DynamicBatcher, OverloadedError
from tfrec_proxy.server.protocol import (RequestError, format_predict, format_recommend,
                                         parse_json, parse_predict, parse_recommend)

logger = logging.getLogger("tfrec_proxy.server")


class _ModelName(Convertor):
    """A model name in a URL: anything up to the next `/` or `:`."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("tfrec_model", _ModelName())


@dataclasses.dataclass
class ServerSettings:
    """How the server batches and what it accepts.

    Attributes:
        batching: Merge concurrent requests into batched model calls.
        max_batch_size: Histories per model call, and per request, at most.
        batch_timeout_ms: How long a request waits for others to share its batch.
        max_request_bytes: Largest request body (larger: HTTP 413).
        num_threads: Model calls running at once (default: CPUs, at most 4).
        max_queued_rows: Histories waiting or running beyond which requests get HTTP
            503 (default: 64 batches' worth).
        poll_interval_s: Seconds between checks for new versions (0: never).

    Example:

        settings = ServerSettings(max_batch_size=32, batch_timeout_ms=1.0)
        app = create_app(ModelRegistry("saved_models/demo"), settings)
    """

    batching: bool = True
    max_batch_size: int = 64
    batch_timeout_ms: float = 2.0
    max_request_bytes: int = 1 << 20
    num_threads: Optional[int] = None
    max_queued_rows: Optional[int] = None
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {self.batch_timeout_ms}")
        self.num_threads = self.num_threads or min(4, os.cpu_count() or 1)
        self.max_queued_rows = self.max_queued_rows or 64 * self.max_batch_size


def _first_line(error: BaseException) -> str:
    """An error's first line (TensorFlow appends graph context), at most 500 chars."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:500]


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None
           ) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) once it exceeds `limit` bytes, declared or not."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body ({declared} bytes) exceeds this server's "
                           f"limit of {limit} bytes.", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body exceeds this server's limit of {limit} "
                               "bytes.", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(registry: Any, settings: Optional[ServerSettings] = None) -> FastAPI:
    """The FastAPI app serving `registry`'s current version.

    Args:
        registry: A `tfrec_proxy.server.models.ModelRegistry`.
        settings: Batching and limits (default `ServerSettings()`).

    Returns:
        The app; its lifespan starts the registry's polling and stops the batcher.
    """
    settings = settings or ServerSettings()

    def process(key: Any, queries: Any) -> Any:
        return key[0].retrieve(queries)

    if settings.batching:
        runner: DirectRunner = DynamicBatcher(
            process, max_batch_size=settings.max_batch_size,
            timeout_ms=settings.batch_timeout_ms, num_threads=settings.num_threads,
            max_queued_rows=settings.max_queued_rows)
    else:
        runner = DirectRunner(process, num_threads=settings.num_threads,
                              max_queued_rows=settings.max_queued_rows)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start()
        try:
            yield
        finally:
            await runner.close()
            registry.stop()

    app = FastAPI(title="tfrec_proxy", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.registry, app.state.runner, app.state.settings = registry, runner, settings

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path!r}; see GET /v1/models/"
                        f"{registry.name}/metadata",
                   405: f"method {request.method} is not allowed on {request.url.path!r}"}
        return _error(error.status_code, message.get(error.status_code, str(error.detail)),
                      getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError
                               ) -> JSONResponse:
        fields = "; ".join(f"{'.'.join(str(part) for part in item.get('loc', ()))}: "
                           f"{item.get('msg', 'invalid')}" for item in error.errors())
        return _error(400, f"invalid request: {fields}")

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error (logged by the server).")

    def model_for(name: str, version: Optional[int]) -> Any:
        model = registry.get(version) if name == registry.name else None
        if model is None:
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise RequestError(f"Servable not found for request: {wanted}", status=404)
        return model

    async def run(model: Any, query: Any) -> Any:
        try:
            return await runner.submit((model, *query.batch_key()), query, query.rows)
        except OverloadedError as error:
            raise RequestError(str(error), status=503) from None
        except ValueError as error:  # a request the run refuses after all
            logger.warning("the model refused a checked request: %s", error)
            raise RequestError(_first_line(error)) from None
        except Exception as error:  # noqa: BLE001
            if type(error).__name__ == "InvalidArgumentError":  # the graph's own checks
                raise RequestError(_first_line(error)) from None
            raise

    def answer(content: Dict[str, Any], model: Any) -> JSONResponse:
        return JSONResponse(content, headers={"X-Model-Version": str(model.version)})

    async def status(request: Request, name: str) -> JSONResponse:
        version = request.path_params.get("version")
        model_for(name, None)
        entries = registry.status()
        if version is not None:
            entries = [entry for entry in entries if entry["version"] == str(version)]
            if not entries:
                model_for(name, version)  # raises 404
        return JSONResponse({"model_version_status": entries})

    async def metadata(request: Request, name: str) -> JSONResponse:
        model = model_for(name, request.path_params.get("version"))
        return answer({"model_spec": {"name": registry.name, "signature_name": "",
                                      "version": str(model.version)},
                       "metadata": {"signature_def": {
                           "signature_def": model.signature_defs()}},
                       "tfrec_proxy": model.describe()}, model)

    async def predict(request: Request, name: str) -> JSONResponse:
        model = model_for(name, request.path_params.get("version"))
        body = parse_json(await _read_body(request, settings.max_request_bytes))
        query, kind = parse_predict(body, model.inputs, settings.max_batch_size)
        ids, scores = await run(model, query)
        return answer(format_predict(ids, scores, kind), model)

    async def recommend(request: Request, name: str) -> JSONResponse:
        model = model_for(name, request.path_params.get("version"))
        body = parse_json(await _read_body(request, settings.max_request_bytes))
        query = parse_recommend(body, model.inputs)
        ids, scores = await run(model, query)
        return answer(format_recommend(ids, scores), model)

    async def stats() -> JSONResponse:
        return JSONResponse({"model": registry.name, "version": str(registry.current.version),
                             "batching": settings.batching,
                             "max_batch_size": settings.max_batch_size,
                             "batch_timeout_ms": settings.batch_timeout_ms,
                             "num_threads": settings.num_threads, **runner.stats.as_dict()})

    app.add_api_route("/monitoring/stats", stats, methods=["GET"])
    base, versioned = "/v1/models/{name:tfrec_model}", "/versions/{version:int}"
    for prefix in (base, base + versioned):
        app.add_api_route(prefix, status, methods=["GET"])
        app.add_api_route(prefix + "/metadata", metadata, methods=["GET"])
        app.add_api_route(prefix + ":predict", predict, methods=["POST"])
        app.add_api_route(prefix + ":recommend", recommend, methods=["POST"])
    return app


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP; without it a keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def serve(path: Union[str, Path], host: str = "127.0.0.1", port: int = 8501,
          model_name: Optional[str] = None, batching: bool = True, max_batch_size: int = 64,
          batch_timeout_ms: float = 2.0, max_request_bytes: int = 1 << 20, *,
          num_threads: Optional[int] = None, max_queued_rows: Optional[int] = None,
          poll_interval_s: float = 1.0, access_log: bool = False,
          log_level: str = "info") -> None:
    """Serves a run folder (or a base path of numbered versions) over TF Serving's
    REST API until interrupted (SIGINT/SIGTERM; in-flight requests finish).

    Args:
        path: A run folder (served as version 1) or a base path `DIR/1`, `DIR/2`, ...
            (the highest is served; a new one is picked up while serving).
        host: Interface to bind; loopback by default (anything else is reachable from
            the network, with no authentication: put a proxy in front).
        port: TCP port; 0 picks a free one (the ready line names it).
        model_name: NAME in the URLs (default: the folder's name).
        batching, max_batch_size, batch_timeout_ms, max_request_bytes, num_threads,
            max_queued_rows, poll_interval_s: See `ServerSettings`.
        access_log: Log every request (uvicorn's access log).
        log_level: uvicorn's log level.

    Raises:
        RunFormatError: no loadable run at `path`.

    Example:

        serve("saved_models/demo", port=8501)   # curl localhost:8501/v1/models/demo
    """
    import uvicorn

    from tfrec_proxy.server.models import ModelRegistry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Unknown ids are served through the OOV embedding, as the SavedModel does; one
    # warning per request would flood the log.
    warnings.filterwarnings("ignore", category=UnknownItemsWarning)
    settings = ServerSettings(
        batching=batching, max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
        max_request_bytes=max_request_bytes, num_threads=num_threads,
        max_queued_rows=max_queued_rows, poll_interval_s=poll_interval_s)
    registry = ModelRegistry(path, model_name, poll_interval_s)
    # The event loop shares the GIL with the model threads (TensorFlow's Python-side
    # call overhead): a shorter switch interval keeps it from waiting 5 ms for them.
    sys.setswitchinterval(0.001)
    if not _is_loopback(host):
        logger.warning("binding to %s: the server is reachable from the network and has "
                       "no authentication", host)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    batching_text = (f"batching on (max batch {settings.max_batch_size}, timeout "
                     f"{settings.batch_timeout_ms:g} ms)" if batching else "batching off")
    print(f"tfrec_proxy server: model {registry.name!r} version {registry.current.version} "
          f"on http://{shown}:{bound}/v1/models/{registry.name} ({batching_text}, "
          f"{settings.num_threads} threads)", flush=True)
    config = uvicorn.Config(create_app(registry, settings), log_level=log_level,
                            access_log=access_log, server_header=False,
                            limit_concurrency=max(256, 4 * settings.max_batch_size),
                            timeout_graceful_shutdown=30, lifespan="on")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        sys.stdout.flush()
