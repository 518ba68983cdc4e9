"""`tfrec-proxy` training flags, tried systematically (hypothesis): random subsets of
every config flag with valid values, edge numbers (0, negatives, NaN, inf, 1e400,
int64 overflow, non-ASCII digits, "1_000", spaces), bad choices, missing values and
unknown flags, through `tfrec-proxy config` (which resolves the flags into the
`RunConfig` it prints, without training). Each command line either prints a config
whose fields hold exactly the values given (the last of repeated flags wins), or
exits with status 2 and a one-line error naming a flag; nothing else escapes.

Run with `--hypothesis-show-statistics` to see how many command lines were tried."""

import contextlib
import io
import json
import math
import re

from hypothesis import event, given
from hypothesis import strategies as st

from tfrec_proxy.cli import main
from tfrec_proxy.cli.parser import build_parser
from tfrec_proxy.cli.flags import CONFIG_FLAGS
from conftest import fuzz_settings

FUZZ = fuzz_settings(300)
INT64_MAX = 2 ** 63 - 1
NUMBERS = ["0", "1", "7", "-1", "+3", "007", "0.5", "1.0", ".5", "1e3", "2.5e-1", "nan",
           "inf", "-inf", "1e400", "1e-400", "", " ", "abc", "٣", "1_000", " 5", "0x10",
           "9" * 25, str(INT64_MAX), str(INT64_MAX + 1), str(2 ** 32), "-x"]
TEXT = ["", "a b", "ratings.dat", "-x", "é", "val_hr@20", "/tmp/x"]
_INT = re.compile(r"[+-]?[0-9]+")
# What this Python's argparse reads as a negative number rather than an option.
ARGPARSE_NEGATIVE = build_parser()._negative_number_matcher
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# What each number type accepts (its `__name__` is the "expected ..." phrase).
RULES = {
    "a positive integer": (int, lambda v: 1 <= v <= INT64_MAX),
    "a non-negative integer": (int, lambda v: 0 <= v <= INT64_MAX),
    "an integer": (int, lambda v: -INT64_MAX - 1 <= v <= INT64_MAX),
    "a seed in [0, 2**32)": (int, lambda v: 0 <= v < 2 ** 32),
    "a positive number": (float, lambda v: 0 < v < math.inf),
    "a finite number": (float, lambda v: abs(v) < math.inf),
    "a number >= 0": (float, lambda v: 0 <= v < math.inf),
    "a number in [0, 1)": (float, lambda v: 0 <= v < 1),
    "a number in (0, 1]": (float, lambda v: 0 < v <= 1),
    "a number in (0, 1)": (float, lambda v: 0 < v < 1),
}


def _kind(spec):
    if spec.const is not None:
        return "const"
    if spec.choices:
        return "choices"
    return getattr(spec.type, "__name__", "text") if spec.type else "text"


def test_every_flag_type_has_a_rule():
    kinds = {_kind(spec) for spec in CONFIG_FLAGS}
    assert kinds - {"const", "choices", "text"} <= set(RULES), kinds - set(RULES)


def _expected(spec, text):
    """(accepted, value in the config) for one flag's value text."""
    kind = _kind(spec)
    if text.startswith("-") and not ARGPARSE_NEGATIVE.match(text):
        return False, None  # argparse takes it for an option: "expected one argument"
    if kind == "choices":
        return text in spec.choices, text
    if kind == "text":
        if text.startswith("-"):
            return False, None
        if spec.field == "data.time_column" and text == "":
            return True, None
        return True, text
    parse, check = RULES[kind]
    pattern = _INT if parse is int else _FLOAT
    if not pattern.fullmatch(text) or not check(parse(text)):
        return False, None
    return True, parse(text)


def _value(spec):
    kind = _kind(spec)
    if kind == "const":
        return st.just(None)
    if kind == "choices":
        return st.one_of(st.sampled_from(list(spec.choices)),
                         st.sampled_from(["", "nope", spec.choices[0].upper() + "x"]))
    if kind == "text":
        return st.sampled_from(TEXT)
    return st.one_of(st.sampled_from(NUMBERS), st.integers(-5, 300).map(str),
                     st.floats(-2, 2, allow_nan=False).map(repr))


flag_values = st.sampled_from(CONFIG_FLAGS).flatmap(
    lambda spec: st.tuples(st.just(spec), _value(spec)))


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def _field(config, path):
    for part in path.split("."):
        config = config[part]
    return config


@FUZZ
@given(flags=st.lists(flag_values, min_size=1, max_size=4),
       unknown=st.sampled_from([None, None, None, "--epoch", "--no-such-flag"]))
def test_config_flags_are_applied_exactly_or_refused_in_one_line(flags, unknown):
    argv = ["config"]
    for spec, text in flags:
        argv += [spec.flag] if text is None else [spec.flag, text]
    if unknown:
        argv.append(unknown)
    code, out, err = _run(argv)
    expected = {}  # field -> value, the last flag winning
    refused = [spec.flag for spec, text in flags
               if text is not None and not _expected(spec, text)[0]]
    if unknown or refused:
        assert code == 2 and out == "", (argv, code, out)
        assert err.count("\n") == 1, err
        names = refused + ([unknown] if unknown else [])
        assert any(name in err for name in names), (argv, err)
        event("refused")
        return
    assert code == 0, (argv, err)
    config = json.loads(out)
    for spec, text in flags:
        expected[spec.field] = spec.const if text is None else _expected(spec, text)[1]
    for field, value in expected.items():
        got = _field(config, field)
        if isinstance(value, tuple):
            value = list(value)
        if field == "data.source" and any(s.flag == "--data-path" for s, _ in flags):
            continue  # a --data-path may switch the source to "file" (documented)
        assert got == value, (argv, field, got, value)
    event("accepted")
