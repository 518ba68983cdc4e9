"""JSON dicts -> config dataclasses, with the keys and value types checked."""

import dataclasses
import typing
from typing import Any, Type, TypeVar, Union

T = TypeVar("T")


def parse_dataclass(cls: Type[T], values: Any, where: str) -> T:
    """Builds dataclass `cls` from a JSON-style dict, checking keys and types.

    Args:
        cls: The dataclass.
        values: A dict, possibly partial (defaults fill the rest).
        where: Config path for messages, e.g. `"config.model.options"`.

    Raises:
        ValueError: not a dict, unknown keys, or a value of the wrong type.
    """
    return _from_dict(cls, values, where)


def _from_dict(cls: Type[T], values: Any, where: str) -> T:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a JSON object, got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}.")
    return cls(**{name: _typed(value, hints[name], f"{where}.{name}")
                  for name, value in values.items()})


def _typed(value: Any, hint: Any, where: str) -> Any:
    """Checks a JSON value against a field's type hint; lists become tuples."""
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _typed(value, next(a for a in args if a is not type(None)), where)
    if origin is dict:  # Dict[str, Any]: free-form options, checked by their owner
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ValueError(f"{where}: expected an object with string keys, got {value!r}.")
        return dict(value)
    if hint is Any:
        return value
    if origin is tuple:  # Tuple[X, ...]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}.")
        return tuple(_typed(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}.")
    return value
