"""Registries: model kinds, scorers, encoders, extractions, item towers and loss
weightings by name.

A new method is one module plus a registration: the module decorates its builder (or
scorer class) with `MODEL_KINDS.register(...)` / `SCORERS.register(...)` /
`EXTRACTIONS.register(...)` / `ITEM_TOWERS.register(...)` / `ENCODERS.register(...)` /
`WEIGHTINGS.register(...)` and its module name is added to `BUILTIN_MODULES` below, so that looking a name up
imports it. Build, restore, export and evaluation then find it by the name stored in
the run's `config.json` (`model.kind`, `model.scorer`, `model.item_tower`) and
`manifest.json` (`model_kind`).

This module imports neither TensorFlow nor the registered modules until a name is
looked up, so configs can be checked cheaply.

Example:

    @dataclasses.dataclass
    class MyOptions:
        depth: int = 2

    @MODEL_KINDS.register("my_kind", options=MyOptions)
    def build_my_kind(config, options, context):
        ...  # returns a RetrievalModel
"""

import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

# Modules whose import registers the built-in kinds and scorers. A new method adds
# its module here (one line).
BUILTIN_MODULES: Tuple[str, ...] = (
    "tfrec_proxy.scoring",
    "tfrec_proxy.models",
    "tfrec_proxy.layers.extraction",  # extractions "last", "mean"
    "tfrec_proxy.layers.parametric_attention",  # MUR: extraction and scorer "mur"
    "tfrec_proxy.layers.pir",  # PIR: item tower "pir"
    "tfrec_proxy.layers.sasrec",  # encoder "sasrec", item tower "shared"
    "tfrec_proxy.layers.ram",  # encoders "ram", "ram-u"
    "tfrec_proxy.layers.proxysr",  # scorer "proxysr" (ProxySR eq. 7)
    "tfrec_proxy.layers.felrec",  # encoder "felrec" (trained by felrec_training)
    "tfrec_proxy.weighting.baselines",  # weightings "none", "frequency"
    "tfrec_proxy.weighting.idw",  # weighting "idw"
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name.

    Attributes:
        name: The registered name (as written in configs and manifests).
        target: The builder function or the class.
        options: Dataclass of the entry's own settings, or None for none.
        metadata: Facts about the entry that callers read without building it
            (e.g. an extraction's default scorer).
    """

    name: str
    target: Callable[..., Any]
    options: Optional[Type[Any]] = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def parse_options(self, values: Optional[Mapping[str, Any]], where: str) -> Any:
        """Checks `values` against the options dataclass and returns an instance.

        Args:
            values: JSON-style settings (a dict), possibly partial.
            where: Config path for error messages, e.g. `"config.model.options"`.

        Returns:
            An instance of `options` (defaults filled in), or None when the entry
            has no options.

        Raises:
            ValueError: unknown keys, wrong types, or settings given to an entry that
                takes none.
        """
        values = dict(values or {})
        if self.options is None:
            if values:
                raise ValueError(f"{where}: {self.name!r} takes no options, got "
                                 f"{sorted(values)}.")
            return None
        from tfrec_proxy.config_parsing import parse_dataclass  # no TensorFlow
        return parse_dataclass(self.options, values, where)


def _origin(target: Callable[..., Any]) -> Tuple[Any, Any]:
    return getattr(target, "__module__", None), getattr(target, "__qualname__", None)


class Registry:
    """Names -> builders or classes, with their options dataclasses.

    Args:
        what: What the registry holds, for messages (`"model kind"`, `"scorer"`).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: Dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, *, options: Optional[Type[Any]] = None,
                 **metadata: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a builder or class under `name`.

        Args:
            name: The name configs use.
            options: Dataclass of the entry's settings, or None.
            **metadata: Stored as `Entry.metadata`.

        Raises:
            ValueError: `name` is already registered to something else, or
                `options` is not a dataclass.
        """
        if options is not None and not dataclasses.is_dataclass(options):
            raise ValueError(f"options of {self.what} {name!r} must be a dataclass, "
                             f"got {options!r}.")

        def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
            old = self._entries.get(name)
            # The same definition registering again (a module reloaded) is fine.
            if old is not None and _origin(old.target) != _origin(target):
                raise ValueError(f"{self.what} {name!r} is already registered to "
                                 f"{old.target!r}.")
            self._entries[name] = Entry(name, target, options, dict(metadata))
            return target

        return decorate

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in BUILTIN_MODULES:
                importlib.import_module(module)

    def get(self, name: str) -> Entry:
        """The entry registered as `name`.

        Raises:
            ValueError: naming the unknown name and the registered ones.
        """
        if name not in self._entries:
            self._load_builtins()
        if name not in self._entries:
            raise ValueError(f"Unknown {self.what} {name!r}; expected one of "
                             f"{self.names()}.")
        return self._entries[name]

    def names(self) -> List[str]:
        """Registered names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._entries


MODEL_KINDS = Registry("model kind")
SCORERS = Registry("scorer")
# `(ModelConfig) -> layer` mapping `[B, L, d]` hidden states (+ mask) to `[B, d]` or
# `[B, M, d]`; metadata `scorer` is the scorer `ModelConfig.scorer="auto"` picks.
EXTRACTIONS = Registry("extraction")
# `(ModelConfig, BuildContext) -> layer` mapping a candidate feature dict
# (`{"item_id": [...]}`, plus what the tower reads) to `[..., d]` item vectors;
# metadata `attributes=True`: it also embeds `{"attributes", "context"}` of items
# outside the vocabulary (new items, `tfrec_proxy.new_items`); `shares_history=True`:
# the encoder embeds history items with it (tied embeddings).
ITEM_TOWERS = Registry("item tower")
# `(ModelConfig, BuildContext, item_encoder) -> layer` mapping `[B, L]` histories to
# `[B, L, d]` hidden states (`item_encoder`: a layer embedding the history items
# instead of the encoder's own table, or None); metadata `user_embedding=True` adds a
# per-user embedding to the query tower (RAM); `query_tower=True`: the builder returns
# the whole query tower (ProxySR), `scorer=NAME` its scorer under `--scorer auto`;
# `unit_ball_items=True` keeps the `"shared"` item table in the unit ball (ProxySR);
# `trainer=MODULE`: the encoder is a whole method with its own training path
# (`MODULE.train`, FELRec's cache-based towers), which `training.train` dispatches to.
ENCODERS = Registry("encoder")
# `(RunConfig) -> [Phase, ...]`: the training schedule of a loss weighting.
WEIGHTINGS = Registry("weighting")
