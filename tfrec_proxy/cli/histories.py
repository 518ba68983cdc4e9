"""Reading item-id histories from the command line and from history files.

Pure Python (no NumPy/TensorFlow): ids are checked here (integers in the int64 range,
not only padding) so that bad input is a one-line error naming the value and, for
files, the line.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Tuple

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
PAD_ID = -1  # tfrec_proxy.run_format.PAD_ID: history padding
_EXAMPLE = "comma-separated item ids such as 3,17,42"


def _check_ids(ids: List[int]) -> List[int]:
    """Checks the int64 range and that not every id is padding; returns `ids`."""
    for value in ids:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"item id {value} is outside the int64 range "
                             f"[{INT64_MIN}, {INT64_MAX}]; expected an int64 item id")
    if all(value == PAD_ID for value in ids):
        raise ValueError(f"history has only padding ({PAD_ID}); expected at least one "
                         f"item id ({PAD_ID} marks padding)")
    return ids


def parse_ids(text: str) -> List[int]:
    """Parses `"3,17,42"` into item ids.

    Raises:
        ValueError: an empty history, a token that is not an integer (named), an id
            outside int64, or only padding ids (-1).
    """
    tokens = [token.strip() for token in text.split(",")]
    if not text.strip() or not any(tokens):
        raise ValueError(f"history is empty; expected {_EXAMPLE}")
    ids = []
    for token in tokens:
        try:
            ids.append(int(token))
        except ValueError:
            raise ValueError(f"history item {token!r} is not an integer; expected "
                             f"{_EXAMPLE}") from None
    return _check_ids(ids)


def parse_history(text: str) -> List[int]:
    """`--history` type: `parse_ids`, raising `argparse.ArgumentTypeError`."""
    try:
        return parse_ids(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_history_line(text: str) -> List[int]:
    """One line of a history file: a JSON list of ids, or comma-separated ids.

    Raises:
        ValueError: malformed JSON, a JSON value that is not a list of integers, or
            what `parse_ids` rejects.
    """
    text = text.strip()
    if not text.startswith("["):
        return parse_ids(text)
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a valid JSON list ({error.msg} at column "
                         f"{error.colno}); expected e.g. [3, 17, 42] or 3,17,42") from None
    if not isinstance(values, list) or not values:
        raise ValueError(f"history {values!r} is empty or not a list; expected a JSON "
                         "list of item ids such as [3, 17, 42]")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"history item {value!r} is not an integer; expected a JSON "
                             "list of integer item ids such as [3, 17, 42]")
    return _check_ids(values)


def read_histories(path: str) -> List[Tuple[int, List[int]]]:
    """Reads a history file: one history per line, blank lines skipped.

    Args:
        path: The file, or `"-"` for standard input.

    Returns:
        `(line number, ids)` pairs in file order (line numbers start at 1).

    Raises:
        ValueError: a bad line (the message names the file and line number) or no
            history at all.
        OSError: the file cannot be read (e.g. FileNotFoundError).
    """
    name = "<stdin>" if path == "-" else path
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise type(error)(f"cannot read history file {path!r}: "
                              f"{error.strerror or error}") from None
    histories = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            histories.append((number, parse_history_line(line)))
        except ValueError as error:
            raise ValueError(f"{name} line {number}: {error}") from None
    if not histories:
        raise ValueError(f"{name} has no history (every line is blank); expected one "
                         "history per line, e.g. [3, 17, 42] or 3,17,42")
    return histories
