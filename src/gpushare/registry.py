"""Registries: the seams where gpushare grows (engines, sharing modes, workload kinds, executors).

A registry maps the value of one discriminator (`engine: vllm`, `kind: sharegpt`) to the class
that implements it. A plug-in is one module that registers its class; `import_modules` imports
every module of a package, so adding the file is what adds the plug-in. The config side takes
its accepted values from the registry: `literal()` for a key that names a plain class,
`union()` for plug-ins that are their own pydantic config type, so an unknown value in YAML
is refused by the scenario's own validation, in one line naming the key and what is allowed.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any, Callable, Generic, Iterator, Literal, Sequence, TypeVar, Union, get_args

from pydantic import BaseModel, Field

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """The classes of one kind of plug-in, by the name its config gives (`key: name`), in the
    order they were registered."""

    def __init__(self, key: str):
        self.key = key
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """A class decorator: the class implements `key: name`. A pydantic plug-in's own
        discriminator field must declare the same name."""
        def add(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ConfigError(f"{self.key}: {name!r} is registered twice "
                                  f"({self._classes[name].__qualname__} and {cls.__qualname__})")
            declared = _declared_names(cls, self.key)
            if declared is not None and declared != (name,):
                raise ConfigError(f"{self.key}: {cls.__qualname__} is registered as {name!r} but its "
                                  f"{self.key} field allows {', '.join(map(repr, declared))}")
            self._classes[name] = cls
            return cls
        return add

    def __getitem__(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(f"{self.key}: {name!r} is not one of {', '.join(self.names)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[type[T]]:
        return iter(self._classes.values())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def literal(self) -> Any:
        """The field type that accepts exactly the registered names."""
        return Literal[self.names]

    def union(self) -> Any:
        """The field type of registered pydantic classes, told apart by the `key` field."""
        return Annotated[Union[tuple(self._classes.values())], Field(discriminator=self.key)]


def _declared_names(cls: type, key: str) -> tuple[Any, ...] | None:
    """The values a pydantic class's discriminator field admits; None for other classes."""
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or key not in cls.model_fields:
        return None
    return get_args(cls.model_fields[key].annotation)


def import_modules(package: str, first: Sequence[str] = ()) -> None:
    """Import every module of `package` (by its dotted name), so that each registers what it
    defines: the modules named in `first` in that order (the order a config's error lists the
    names in), then the others by name."""
    found = importlib.import_module(package)
    names = sorted(module.name for module in pkgutil.iter_modules(found.__path__))
    for name in [*first, *(name for name in names if name not in first)]:
        importlib.import_module(f"{package}.{name}")
