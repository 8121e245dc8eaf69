"""Saving a pruned model and loading it back into a freshly built instance of the original class.

A plain ``state_dict`` cannot be loaded into the original architecture (the shapes differ), so the
file also stores the size attributes of every layer the registry knows (``LayerSpec.size_attrs``:
``in_channels``, ``embedding_dim``, ``num_heads``...) and every module's int attributes (surgery
also rewrites ints a forward reads as sizes, ``self.num_attention_heads``, that no spec names). Loading reshapes the fresh model's tensors and
attributes first, loads the weights, then checks every layer (``LayerSpec.check``). Only tensors,
ints, strings and lists are stored, so ``torch.load(..., weights_only=True)`` reads it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .record import is_size_value
from .registry import layer_spec
from .surgery import Snapshot

__all__ = ["save", "load", "FORMAT"]

FORMAT = "surgeon-pruned-v1"


def _layer_attrs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Qualified name -> size attributes of every module with a layer spec (its class's or its
    nearest registered base's, whatever its forward: a subclass's attributes are cut too)."""
    out = {}
    for name, m in model.named_modules():
        spec = layer_spec(m)
        if spec is not None:
            attrs = {a: getattr(m, a) for a in spec.size_attrs}
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
    return out


def _module_ints(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Qualified name -> every public int (or sequence of ints) attribute of every module. Surgery
    also rewrites attributes no layer spec names (``self.num_attention_heads`` of a user's
    attention block, read as a size by its forward), so all of them are kept, not only the specs'."""
    out = {}
    for name, m in model.named_modules():
        ints = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(m).items()
                if not k.startswith("_") and is_size_value(v)}
        if ints:
            out[name] = ints
    return out


def save(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write the (pruned) model's weights, layer sizes and modules' int attributes to ``path``;
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "state_dict": model.state_dict(), "layers": _layer_attrs(model),
                "ints": _module_ints(model)}, path)
    return path


def load(model: nn.Module, path: Union[str, os.PathLike]) -> nn.Module:
    """Load a file written by ``save`` into ``model`` (a fresh instance of the original class).

    Tensors whose stored shape differs are replaced by tensors of the stored shape before loading;
    layer attributes are set from the file. On any error the model is left unchanged.
    """
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a readable surgeon checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a surgeon checkpoint (expected format {FORMAT!r}); "
                         "write it with surgeon.save(model, path)")
    state, layers = blob["state_dict"], blob["layers"]
    modules = dict(model.named_modules())
    snap = Snapshot(list(modules.values()))
    try:
        for key, value in state.items():
            owner_name, _, name = key.rpartition(".")
            owner = modules.get(owner_name)
            if owner is None:
                raise ValueError(f"{path} holds {key!r}, but the model has no module {owner_name!r}: "
                                 "load it into the architecture it was pruned from")
            old = getattr(owner, name, None)
            if isinstance(old, torch.Tensor) and old.shape != value.shape:
                if name in owner._parameters:
                    owner._parameters[name] = nn.Parameter(torch.empty_like(value, dtype=old.dtype),
                                                           requires_grad=old.requires_grad)
                elif name in owner._buffers:
                    owner._buffers[name] = torch.empty_like(value, dtype=old.dtype)
        for name, attrs in layers.items():
            m = modules.get(name)
            if m is None:
                raise ValueError(f"{path} describes layer {name!r}, which the model does not have")
            for k, v in attrs.items():
                setattr(m, k, tuple(v) if isinstance(v, list) else v)
        for name, attrs in blob.get("ints", {}).items():  # files of older versions have none
            m = modules.get(name)
            if m is None:
                raise ValueError(f"{path} describes module {name!r}, which the model does not have: "
                                 "load it into the architecture it was pruned from")
            for k, v in attrs.items():
                if k in layers.get(name, {}):
                    continue  # a layer's size attributes come from its spec's record above
                old = vars(m).get(k)
                if is_size_value(old) and old != (tuple(v) if isinstance(old, tuple) else v):
                    object.__setattr__(m, k, tuple(v) if isinstance(old, tuple) else v)
        model.load_state_dict(state, strict=True)
        specs = {n: layer_spec(m) for n, m in modules.items()}
        bad = [f"{n}: {msg}" for n, spec in specs.items() if spec is not None for msg in spec.check(modules[n])]
        if bad:
            raise ValueError("loaded layers disagree with their tensors: " + "; ".join(bad[:5]))
    except Exception:
        snap.restore()
        raise
    return model
