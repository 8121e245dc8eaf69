"""Loading trained weights, saved as a plain ``state_dict``, into a freshly built dense model.

    torch.save(model.state_dict(), "w.pt")      # after training
    load_weights(resnet20(), "w.pt")            # before tracing / pruning (``surgeon prune --weights``)

The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and
plain containers only, never arbitrary pickled objects. Accepted, besides a bare state_dict:

* a training checkpoint that holds the state_dict under ``"state_dict"``, ``"model"`` or
  ``"model_state_dict"`` (with an epoch, an optimizer...), when exactly one of those keys holds one;
* keys that all start with a wrapper's prefix: ``module.`` (DataParallel / DistributedDataParallel),
  ``_orig_mod.`` (``torch.compile``), ``model.`` (Lightning-style wrappers); the prefix is stripped
  with a :class:`StrippedPrefixWarning`, unless the model itself has a top-level module of that name.

Everything else (a whole pickled model, a single tensor, keys or shapes that do not fit, a pruned
model's weights) is a ``ValueError`` (``FileNotFoundError`` for a missing file) whose one-line
message says what is wrong and what to do. Nothing is loaded unless everything fits.

A *pruned* model's plain state_dict cannot be loaded into the dense architecture (its tensors are
smaller and it does not say which layers shrank): pruned models go through ``surgeon.save`` /
``surgeon.load`` (see ``checkpoint.py``), which is also what ``surgeon prune -o DIR`` writes.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .record import user_stacklevel
from .checkpoint import FORMAT as PRUNED_FORMAT

__all__ = ["load_weights", "StrippedPrefixWarning", "WRAPPER_KEYS", "WRAPPER_PREFIXES"]

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")   # checkpoint["state_dict"] etc.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")      # DDP, torch.compile, Lightning-style
_SHOW = 3  # key names shown per list in an error


class StrippedPrefixWarning(UserWarning):
    """Every key of the state_dict started with a wrapper's prefix (``module.``...), now removed."""


def load_weights(model: nn.Module, path: Union[str, os.PathLike], *, model_name: str | None = None) -> nn.Module:
    """Load the state_dict saved at ``path`` into ``model`` (strictly: every key, every shape); returns it.

    ``model_name`` names the architecture in error messages (default: the model's class name).
    See the module docstring for the checkpoint layouts accepted and the errors raised.
    """
    path = Path(path)
    name = model_name or type(model).__name__
    expected = model.state_dict()
    state = _strip_prefixes(_unwrap(_read(path), path), expected, path)
    _check_fits(state, expected, path, name)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # keys and shapes fit: something odder (a module's own loading hook)
        raise ValueError(f"{path}: loading into {name} failed: {e}") from e
    return model


def _read(path: Path) -> Any:
    if path.is_dir():
        raise ValueError(f"weights path {path} is a directory; give the file written by "
                         "torch.save(model.state_dict(), path)")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns before refusing a TorchScript archive; we say why
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(_unreadable(path, e)) from e


def _unreadable(path: Path, e: Exception) -> str:
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:  # weights_only refused a class: a whole pickled model (or another object)
        return (f"{path} holds a pickled {found.group(1)}, not just tensors (a whole model saved with "
                "torch.save(model)?), which cannot be loaded safely; save the weights instead: "
                "torch.save(model.state_dict(), path)")
    if "TorchScript" in text:
        return (f"{path} is a TorchScript archive (torch.jit.save), not a state_dict; save the weights "
                "with torch.save(model.state_dict(), path)")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)  # "Unsupported operand 110"
    text = detail.group(1) if detail else text
    hint = ("; a .safetensors file: convert it with torch.save(safetensors.torch.load_file(path), new_path)"
            if path.suffix == ".safetensors" else "")
    return (f"{path} is not a file torch.load can read ({type(e).__name__}: {text or 'empty or truncated'}); "
            f"expected torch.save(model.state_dict(), path){hint}")


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of str -> tensor (``*_extra_state`` entries may hold anything)."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
                    for k, v in obj.items()))


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """A bare state_dict, or the one under exactly one of WRAPPER_KEYS."""
    if _is_state_dict(obj):
        return obj
    fix = "save the weights with torch.save(model.state_dict(), path)"
    if isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds a single tensor of shape {_shape(obj)}, not a state_dict "
                         f"(a dict of parameter name -> tensor); {fix}")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict "
                         f"(a dict of parameter name -> tensor); {fix}")
    if obj.get("format") == PRUNED_FORMAT:
        raise ValueError(f"{path} is a pruned model written by surgeon.save (or `surgeon prune -o`), not the "
                         "dense model's state_dict: load it with surgeon.load(model, path), or export it with "
                         f"`surgeon export {path}`")
    inner = [k for k in WRAPPER_KEYS if _is_state_dict(obj.get(k))]
    if len(inner) == 1:
        return obj[inner[0]]
    keys = ", ".join(map(repr, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
    if len(inner) > 1:
        raise ValueError(f"{path} holds several state_dicts (under {' and '.join(map(repr, inner))}), which "
                         f"is ambiguous; save the one you mean on its own: {fix}")
    if not obj:
        raise ValueError(f"{path} holds an empty dict; {fix}")
    raise ValueError(f"{path} holds a dict with keys {keys} whose values are not all tensors, and none of "
                     f"{', '.join(map(repr, WRAPPER_KEYS))} holds a state_dict; {fix}, or keep it under "
                     "'state_dict' in a training checkpoint")


def _strip_prefixes(state: Mapping[str, Any], expected: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """``module.conv1.weight`` -> ``conv1.weight`` while every key has a wrapper's prefix the model lacks.

    Repeated: DDP around a compiled model saves ``module._orig_mod.conv1.weight``.
    """
    stripped = ""
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)
                       and not any(k.startswith(p) for k in expected)), None)
        if prefix is None:
            break
        state = _without_prefix(state, prefix)
        stripped += prefix
    if stripped:
        warnings.warn(f"{path}: removed the prefix {stripped!r} from every key (weights saved from a wrapped "
                      "model: DataParallel / DistributedDataParallel, torch.compile or a training wrapper)",
                      StrippedPrefixWarning, stacklevel=user_stacklevel())
    return state


def _without_prefix(state: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    """The keys without ``prefix``; the version metadata that load_state_dict reads follows them."""
    out: Any = OrderedDict((k[len(prefix):], v) for k, v in state.items())
    meta = getattr(state, "_metadata", None)
    if meta is not None:  # module paths: "module.conv1" -> "conv1", "module" -> ""
        root = prefix[:-1]
        out._metadata = OrderedDict((("" if k == root else k[len(prefix):]), v) for k, v in meta.items()
                                    if k == root or k.startswith(prefix))
    return out


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOW]) + (f" +{len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def _check_fits(state: Mapping[str, Any], expected: Mapping[str, Any], path: Path, name: str) -> None:
    """Every key of the model in the file and vice versa, with the same shapes; else one clear error.

    Kept short: the CLI shows 400 characters of a message (the head and the advice at the end).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the file: {len(missing)} of the model's {len(expected)} ({_few(missing)})")
        if unexpected:
            parts.append(f"not in the model: {len(unexpected)} of the file's {len(state)} ({_few(unexpected)})")
        raise ValueError(f"{path} does not fit {name}: {'; '.join(parts)}; weights for another model? "
                         "Save them with torch.save(model.state_dict(), path) from this architecture")
    differ = [k for k, v in state.items() if isinstance(v, torch.Tensor) and isinstance(expected[k], torch.Tensor)
              and v.shape != expected[k].shape]
    if not differ:
        return
    first = differ[0]
    shown = (f"{first} is {_shape(state[first])} in the file but {_shape(expected[first])} in the model"
             + (f" (+{len(differ) - 1} more tensors differ)" if len(differ) > 1 else ""))
    smaller = all(state[k].dim() == expected[k].dim()
                  and all(a <= b for a, b in zip(state[k].shape, expected[k].shape)) for k in differ)
    modules = {k.rpartition(".")[0] for k in differ}
    # Pruning shrinks a channel's producer and its consumers alike: several modules, all smaller. One
    # module alone (fc.weight and fc.bias) is rather another number of classes.
    if smaller and len(modules) > 1:
        advice = ("a pruned model's state_dict? It cannot restore the dense architecture: save pruned models "
                  "with surgeon.save(model, path) and load them with surgeon.load(fresh_model, path) "
                  "(`surgeon prune -o DIR` writes DIR/model.pt that way)")
    else:
        advice = (f"weights for another configuration of {name} (width, number of classes)? "
                  "Build the one they were trained with")
    raise ValueError(f"{path} does not fit {name}: {shown}; {advice}")
