"""`python -m tfrec_proxy.server --run DIR [...]`: serve a run over TF Serving's REST API.

The flags are those of `tfrec-proxy serve`. Start-up errors (no loadable run, a port
in use) are one line on stderr with exit status 2.
"""

import argparse
import sys
from typing import List, Optional


DESCRIPTION = ("Serve a run folder (or a base path of numbered version folders, DIR/1, "
               "DIR/2, ...: the highest is served, new ones are picked up) over TF "
               "Serving's REST API.")


def build_parser() -> argparse.ArgumentParser:
    """The `serve` flags (`python -m tfrec_proxy.server`)."""
    parser = argparse.ArgumentParser(prog="python -m tfrec_proxy.server",
                                     description=DESCRIPTION)
    add_serve_arguments(parser)
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `serve` flags to `parser` (shared with `tfrec-proxy serve`); the
    module imports neither TensorFlow nor the server stack."""
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="run folder, or base path of numbered version folders")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: loopback only; the "
                             "server has no authentication)")
    parser.add_argument("--port", type=int, default=8501,
                        help="TCP port (default 8501, as TF Serving; 0: a free port)")
    parser.add_argument("--model-name", help="NAME in /v1/models/NAME (default: the "
                                             "folder's name)")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="merge concurrent requests into batched model calls "
                             "(default on)")
    parser.add_argument("--max-batch-size", type=int, default=64,
                        help="histories per model call and per request (default 64)")
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0,
                        help="how long a request waits for others to batch with "
                             "(default 2 ms)")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20,
                        help="largest request body (default 1 MiB)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="model calls running at once (default: CPUs, at most 4)")
    parser.add_argument("--poll-interval-s", type=float, default=1.0,
                        help="seconds between checks for new versions (0: never)")
    parser.add_argument("--access-log", action="store_true", help="log every request")


def main(argv: Optional[List[str]] = None) -> int:
    """Parses the flags and serves until interrupted."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serves with parsed `add_serve_arguments` flags until interrupted; start-up
    errors are one line on stderr and status 2."""
    import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2; before any TF import)
    from tfrec_proxy.server.app import serve

    try:
        serve(args.run, host=args.host, port=args.port, model_name=args.model_name,
              batching=args.batching, max_batch_size=args.max_batch_size,
              batch_timeout_ms=args.batch_timeout_ms,
              max_request_bytes=args.max_request_bytes, num_threads=args.num_threads,
              poll_interval_s=args.poll_interval_s, access_log=args.access_log)
    except (ValueError, OSError) as error:  # RunFormatError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
