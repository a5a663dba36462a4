"""The ``nn.Linear`` layers of a model: finding them, replacing them, and recording what enters them
while the model runs on calibration data."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import torch
import torch.nn as nn


class Observer(Protocol):
    def add(self, x: torch.Tensor) -> None: ...


O = TypeVar("O", bound=Observer)


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Name -> module of every ``nn.Linear``."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not layers:
        raise ValueError("the model has no nn.Linear layer")
    return layers


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted path) is, in place."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def replace_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module], skip: Iterable[str] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` (except names in ``skip``) by ``make(name, linear)``, in place."""
    skip = set(skip)
    targets = [(n, m) for n, m in linear_layers(model).items() if n not in skip]
    if not targets:
        raise ValueError("the model has no nn.Linear layer to replace")
    for name, lin in targets:
        set_module(model, name, make(name, lin))
    return model


@torch.no_grad()
def observe_linear_inputs(
    model: nn.Module, run: Callable[[], object], make: Callable[[nn.Linear], O], layers: Iterable[str] | None = None,
) -> dict[str, O]:
    """Call ``run()`` once; every input ``x`` of each Linear (or of those named) goes to ``observer.add(x)``,
    where the observer of a layer is ``make(layer)``. Returns ``{name: observer}``."""
    all_linear = linear_layers(model)
    names = list(all_linear) if layers is None else list(layers)
    unknown = [n for n in names if n not in all_linear]
    if unknown:
        raise ValueError(f"not nn.Linear layers of the model: {unknown}")
    observers = {n: make(all_linear[n]) for n in names}
    hooks = [all_linear[n].register_forward_pre_hook(lambda mod, args, o=observers[n]: o.add(args[0])) for n in names]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return observers
