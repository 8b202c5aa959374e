"""Architectures by name, so model files can say which network they hold and later ones plug in."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an ``nn.Module`` buildable by ``build_model(name, **kwargs)``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"architecture name {name!r} is already registered")
        _MODELS[name] = cls
        return cls

    return add


def build_model(name: str, **kwargs) -> nn.Module:
    """A freshly initialised network of the named architecture."""
    try:
        cls = _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_MODELS))}") from None
    return cls(**kwargs)


def model_names() -> list[str]:
    return sorted(_MODELS)


def input_contract(network: nn.Module) -> dict[str, int]:
    """What a network needs of its input, as it declares it: spatial sizes a multiple of ``size_multiple``,
    ``spatial_dims`` (2: slices, 3: volumes) and ``in_channels``. Copied into model files and checked on load,
    so that a network needing multiples of 32 is never fed multiples of 16."""
    return {"size_multiple": int(getattr(network, "size_multiple", 16)),
            "spatial_dims": int(getattr(network, "spatial_dims", 2)),
            "in_channels": int(getattr(network, "in_channels", 1))}


def accepted_arguments(name: str) -> set[str]:
    """Constructor arguments of a registered architecture (to pass the trainer's defaults only where they fit)."""
    import inspect

    if name not in _MODELS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_MODELS))}")
    return set(inspect.signature(_MODELS[name].__init__).parameters) - {"self"}
