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
