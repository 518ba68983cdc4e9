"""A TF Serving-compatible REST server for run folders (FastAPI + uvicorn).

`serve(path)` serves a run folder, or a base path of numbered version folders
(`DIR/1`, `DIR/2`, ...) of which the highest is served and new ones are hot-swapped
in, on TF Serving's REST API (`GET /v1/models/NAME`, `GET /v1/models/NAME/metadata`,
`POST /v1/models/NAME:predict`) plus `POST /v1/models/NAME:recommend`, with dynamic
batching of concurrent requests. From a shell: `python -m tfrec_proxy.server --run DIR`.

Modules: `app` (routes, `serve`), `protocol` (request parsing and response formats),
`batching` (the dynamic batcher), `models` (loaded versions, hot swap), `loadtest`
(a loopback load generator). Importing this package is cheap: TensorFlow loads with
the first model, FastAPI with `create_app`/`serve`.
"""

import importlib
from typing import Any, Dict, List

_LAZY: Dict[str, str] = {
    "serve": "tfrec_proxy.server.app",
    "create_app": "tfrec_proxy.server.app",
    "ServerSettings": "tfrec_proxy.server.app",
    "DynamicBatcher": "tfrec_proxy.server.batching",
    "DirectRunner": "tfrec_proxy.server.batching",
    "ModelRegistry": "tfrec_proxy.server.models",
    "ServedModel": "tfrec_proxy.server.models",
    "RequestError": "tfrec_proxy.server.protocol",
    "run_load": "tfrec_proxy.server.loadtest",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfrec_proxy.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
