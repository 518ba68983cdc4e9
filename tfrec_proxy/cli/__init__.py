"""`tfrec-proxy` command line: train, config, evaluate, export, recommend, report.

Thin over the Python API. Importing this package does not import TensorFlow (the
verbs import what they need when they run), so `tfrec-proxy --help` is fast.

Modules: `parser` (flags, the shared `RunConfig` overrides), `histories` (history
input), `commands` (the verbs and `main`).
"""

from tfrec_proxy.cli.commands import main
from tfrec_proxy.cli.histories import parse_history, read_histories
from tfrec_proxy.cli.parser import build_parser, config_from_args

__all__ = ["build_parser", "config_from_args", "main", "parse_history", "read_histories"]
