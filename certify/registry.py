"""One plugin registry, used by `denoisers`, `classifiers` and the dataset specs.

A *spec* is ``family`` or ``family:identifier``; the family names a registered factory, the
identifier (a path, a hub id, a model name) is handed to it. Built-in plugins are found in their
package: every module there that calls ``register_<kind>(...)`` is imported on first use, so a new
file is enough. Bundled pretrained weights (``PACKAGE/pretrained/NAME/bundle.json``) are registered
as their own names in timm's ``architecture.tag`` style, so ``list_*("*mnist*")`` finds them.
Third-party packages add factories through an entry-point group; a name that is already taken is
refused (by ``register``) or reported and ignored (an entry point), never silently replaced.

A family that needs files, the network or an optional package also registers a preflight ``check``
(``register(name, check=fn)``, or a ``check`` attribute on the factory): ``fn(identifier, **options)``
returns what is missing, one line each with what fixes it, without downloading or building anything;
:meth:`Registry.check` runs it, so a run can list every problem before it loads a model.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import inspect
import json
import logging
import pkgutil
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

Factory = Callable[..., Any]
Check = Callable[..., "list[str]"]


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Factory
    summary: str
    check: Check | None = None


def close_matches(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean 'X'?"`` for the candidates closest to a mistyped name (``""`` when none is close),
    to append to the message that refuses it.

    >>> "unknown model 'resnt50'" + close_matches("resnt50", ["resnet50", "resnet18", "vit_base"], prefix="timm:")
    "unknown model 'resnt50'; did you mean 'timm:resnet50', 'timm:resnet18'?"
    """
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""


def split_spec(spec: str) -> tuple[str, str | None]:
    """Split ``family:identifier`` into its parts (the identifier may itself contain ':').

    >>> split_spec("ddpm:google/ddpm-cifar10-32")
    ('ddpm', 'google/ddpm-cifar10-32')
    >>> split_spec("none")
    ('none', None)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty string like 'family' or 'family:identifier', got {spec!r}")
    family, sep, ident = spec.strip().partition(":")
    if sep and not ident:
        raise ValueError(f"spec {spec!r} has an empty identifier after ':'")
    return family, (ident if sep else None)


def refuse_unknown_options(options: Iterable[str], accepted: Sequence[str], what: str) -> None:
    """One line naming the options ``what`` does not take and those it does (instead of a TypeError).

    >>> refuse_unknown_options(["colour"], ["size"], "dataset 'imagefolder'")
    Traceback (most recent call last):
    ...
    ValueError: unknown option 'colour' for dataset 'imagefolder'; it takes size
    """
    unknown = [k for k in options if k not in accepted]
    if unknown:
        hint = close_matches(unknown[0], accepted) if len(unknown) == 1 else ""
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                         f"{what}{hint}; it takes {', '.join(accepted) if accepted else 'no options'}")


def plugin_modules(package: str, kind: str) -> list[str]:
    """The modules of ``package`` (subpackages included, private ``_names`` not) whose source calls
    ``register_<kind>(``: the built-in plugins, found without importing the rest (trainers, helpers).

    >>> "denoisers.dncnn" in plugin_modules("denoisers", "denoiser")
    True
    >>> "denoisers.training" in plugin_modules("denoisers", "denoiser")
    False
    """
    root = importlib.import_module(package)
    pattern = re.compile(rf"\bregister_{kind}\s*\(")
    found = []
    for info in pkgutil.iter_modules(root.__path__):
        if info.name.startswith("_"):
            continue
        folder = Path(root.__path__[0]) / info.name
        source = folder / "__init__.py" if info.ispkg else folder.with_suffix(".py")
        if source.is_file() and pattern.search(source.read_text(encoding="utf-8", errors="replace")):
            found.append(f"{package}.{info.name}")
    return sorted(found)


def entry_spec(entry: str | Mapping[str, Any]) -> str:
    """The spec of a config entry: a spec string, or ``{spec: ..., kwargs: {...}}``.

    >>> entry_spec({"spec": "small-cnn", "kwargs": {"width": 4}}), entry_spec("timm:resnet18")
    ('small-cnn', 'timm:resnet18')
    """
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("spec"), str) and set(entry) <= {"spec", "kwargs"} \
            and isinstance(entry.get("kwargs") or {}, Mapping):
        return entry["spec"]
    raise ValueError(f"an entry must be a spec string or {{spec: ..., kwargs: {{...}}}}, got {entry!r}")


def factory_options(factory: Factory) -> list[str] | None:
    """The options a factory takes: those it declares (``factory.options``, for one that hands ``**kwargs`` on),
    else its keyword parameters besides ``identifier``; None when it takes ``**kwargs`` undeclared (what they
    reach decides) or has no readable signature."""
    declared = getattr(factory, "options", None)
    if isinstance(declared, (tuple, list)):
        return list(declared)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "identifier"]


class Registry:
    """Named factories of one kind (denoiser, classifier, dataset).

    >>> reg = Registry("widget", entry_point_group=None)
    >>> @reg.register("square")
    ... def make_square(identifier=None, side=1):
    ...     return ("square", side)
    >>> reg.create("square", side=3)
    ('square', 3)
    >>> reg.list("sq*")
    ['square']
    >>> reg.create_entry({"spec": "square", "kwargs": {"side": 2}})
    ('square', 2)
    """

    def __init__(self, kind: str, entry_point_group: str | None, package: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.package = package  # where the built-in plugins live (found by plugin_modules)
        self._entries: dict[str, Entry] = {}
        self._plugin_sources: dict[str, str] = {}  # name -> the distribution that registered it
        self._builtins_loaded = package is None
        self._plugins_loaded = entry_point_group is None

    def _holder(self, name: str) -> str:
        if name in self._plugin_sources:
            return f"the plugin from {self._plugin_sources[name]}"
        module = getattr(self._entries[name].factory, "__module__", None) or "?"
        if self.package is None:
            return f"the built-in {self.kind}"
        return f"the built-in {self.kind} ({module})" if self._is_builtin(module) else module

    def _is_builtin(self, module: str | None) -> bool:
        return bool(self.package and module and (module == self.package or module.startswith(self.package + ".")))

    def register(self, name: str, summary: str = "", check: Check | None = None) -> Callable[[Factory], Factory]:
        """Decorator: register ``factory(identifier=None, **kwargs)`` under ``name``, with its preflight
        ``check(identifier=None, **kwargs) -> list[str]`` (default: the factory's ``check`` attribute, if any).

        A name already taken (a built-in included: they are loaded first) is refused, naming its holder.
        """
        if not name or ":" in name:
            raise ValueError(f"{self.kind} name must be non-empty and contain no ':', got {name!r}")

        def decorator(factory: Factory) -> Factory:
            if not self._is_builtin(getattr(factory, "__module__", None)):
                self._load_builtins()  # so that a clash with a built-in is seen now, whatever the order
            if name in self._entries and self._entries[name].factory is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._holder(name)}; "
                                 f"register yours under another name")
            doc = summary or next(iter((factory.__doc__ or "").strip().splitlines()), "")
            self._entries[name] = Entry(name, factory, doc, check)
            return factory

        return decorator

    def _load_builtins(self) -> None:
        """Import every plugin module of the package, then name its shipped weights (once)."""
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        for module in plugin_modules(self.package, self.kind):
            importlib.import_module(module)
        root = importlib.import_module(self.package)
        self.register_bundled(Path(root.__path__[0]) / "pretrained")

    def _load_plugins(self) -> None:
        self._load_builtins()
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            dist = ep.dist.name if ep.dist is not None else "an installed package"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the library
                log.warning("could not load %s plugin %r from %s: %s", self.kind, ep.name, dist, exc)
                continue
            if ep.name in self._entries:  # the first keeps its name (a built-in always); the other is reported
                if self._entries[ep.name].factory is obj:  # one package seen twice on the path
                    continue
                log.warning("%s plugin %r from %s collides with %s of that name and is ignored; its package "
                            "should register it under another name", self.kind, ep.name, dist, self._holder(ep.name))
            elif not callable(obj):
                log.warning("%s plugin %r from %s is not callable (a factory make(identifier=None, **kwargs) "
                            "is expected) and is ignored", self.kind, ep.name, dist)
            else:
                try:
                    self.register(ep.name)(obj)
                except ValueError as exc:  # e.g. a name with ':'
                    log.warning("%s plugin from %s is ignored: %s", self.kind, dist, exc)
                    continue
                self._plugin_sources[ep.name] = dist

    def entry(self, name: str) -> Entry:
        self._load_plugins()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}{close_matches(name, self._entries)} "
                             f"(known: {', '.join(sorted(self._entries)) or 'none'})")
        return self._entries[name]

    def create(self, spec: str, **kwargs: Any) -> Any:
        """Build the object a spec names; extra keyword arguments go to the factory.

        A keyword the factory does not take is one line naming it (a ``TypeError`` raised inside the
        factory for any other reason is left alone).
        """
        family, ident = split_spec(spec)
        factory = self.entry(family).factory
        accepted = factory_options(factory)
        if accepted is not None:
            refuse_unknown_options(kwargs, accepted, f"{self.kind} {family!r}")
            return factory(identifier=ident, **kwargs)
        try:
            return factory(identifier=ident, **kwargs)
        except TypeError as exc:  # **kwargs handed on (to timm, a network): did the receiver refuse one of ours?
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if bad is None or bad.group(1) not in kwargs:
                raise
            raise ValueError(f"unknown option {bad.group(1)!r} for {self.kind} {spec!r} ({exc})") from None

    def check(self, spec: str, **kwargs: Any) -> list[str]:
        """What building ``spec`` would lack (files, the hub, packages, a name or an option), one line each
        with what fixes it; nothing is downloaded or built. ``[]`` when nothing is missing.

        >>> reg = Registry("widget", entry_point_group=None)
        >>> _ = reg.register("square", check=lambda identifier=None, **kw: [] if identifier else ["needs a side"])(
        ...     lambda identifier=None: identifier)
        >>> reg.check("square"), reg.check("square:2"), reg.check("squar:2")
        (['needs a side'], [], ["unknown widget 'squar'; did you mean 'square'? (known: square)"])
        """
        try:
            family, ident = split_spec(spec)
            entry = self.entry(family)
            accepted = factory_options(entry.factory)
            if accepted is not None:
                refuse_unknown_options(kwargs, accepted, f"{self.kind} {family!r}")
            check = entry.check or getattr(entry.factory, "check", None)
            return list(check(identifier=ident, **kwargs)) if check is not None else []
        except ValueError as exc:  # a check may refuse a value the way its factory would
            return [str(exc)]

    def create_entry(self, entry: str | Mapping[str, Any]) -> Any:
        """Build what a config entry names: a spec string, or ``{spec: ..., kwargs: {...}}``."""
        spec = entry_spec(entry)
        kwargs = dict(entry.get("kwargs") or {}) if isinstance(entry, Mapping) else {}
        return self.create(spec, **kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard pattern, sorted (built-ins, shipped weights and
        entry-point plugins)."""
        self._load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def summaries(self, pattern: str = "*") -> list[tuple[str, str]]:
        return [(n, self._entries[n].summary) for n in self.list(pattern)]

    def register_bundled(self, root: Path) -> None:
        """Register each ``root/NAME/bundle.json`` (``{"family": ..., "summary": ...}``) as ``NAME``.

        Shipped pretrained weights thereby get names (timm-style ``architecture.tag``) that resolve to
        ``family:root/NAME``, the same loader a user's own checkpoint goes through.
        """
        for meta_file in sorted(Path(root).glob("*/bundle.json")):
            meta = json.loads(meta_file.read_text())
            name = meta_file.parent.name
            if name not in self._entries:
                factory = functools.partial(self._create_bundled, meta["family"], str(meta_file.parent))
                check = functools.partial(self._create_bundled, meta["family"], str(meta_file.parent), self.check)
                self.register(name, summary=meta.get("summary", ""), check=check)(factory)

    def _create_bundled(self, family: str, path: str, build: Callable[..., Any] | None = None,
                        identifier: str | None = None, **kwargs: Any) -> Any:
        """``family:path`` built (or checked, ``build=self.check``) as the loader of a user's checkpoint would."""
        if identifier is not None:
            raise ValueError(f"bundled {self.kind} {Path(path).name!r} takes no identifier, got {identifier!r}")
        return (build or self.create)(f"{family}:{path}", **kwargs)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries
