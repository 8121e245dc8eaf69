"""MODEL strings, as the command line takes them, -> a fresh ``nn.Module`` and its input shape.

Accepted forms (tried in this order):

* a zoo name: ``resnet50`` (see ``surgeon_models.names()``); the zoo knows the input shape;
* ``torchvision:resnet18`` / ``timm:resnet18``: a model of those libraries, built without
  pretrained weights (default input shape 1,3,224,224, or timm's ``default_cfg``); a clear
  error when the library is not installed;
* ``package.module:factory`` or ``path/to/file.py:factory``: ``factory`` is called with no
  arguments (a class or a function); an ``nn.Module`` instance is used as it is. The input shape
  comes from ``--input-shape``, else from an ``input_shape`` attribute of the factory or module.

Every user mistake is a ``ModelSpecError`` (a ``ValueError``) with a one-line message.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

__all__ = ["ModelSpecError", "Resolved", "resolve_model", "parse_input_shape", "parse_ratios"]

_DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)


class ModelSpecError(ValueError):
    """A MODEL string that names nothing buildable, or an input shape that does not parse."""


@dataclass(frozen=True)
class Resolved:
    """A built model and how to rebuild it.

    spec: the MODEL string as given (stored next to checkpoints so the architecture can be rebuilt).
    model: a fresh instance in eval mode.
    input_shape: the example input shape, batch dimension included.
    """

    spec: str
    model: nn.Module
    input_shape: tuple[int, ...]


def parse_input_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> (1, 3, 224, 224); None stays None."""
    if text is None:
        return None
    if not isinstance(text, str):
        parts: list[Any] = list(text)
    else:
        parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p != ""]
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ModelSpecError(f"input shape must be comma-separated positive integers such as "
                             f"1,3,224,224, got {text!r}") from None
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise ModelSpecError(f"input shape needs a batch and at least one more dimension, all "
                             f"positive (e.g. 1,3,224,224), got {text!r}")
    return shape


def parse_ratios(text: str) -> list[float]:
    """``"0,0.25,0.5"`` -> [0.0, 0.25, 0.5]; every ratio in [0, 1)."""
    out = []
    for p in str(text).split(","):
        p = p.strip()
        if not p:
            continue
        try:
            r = float(p)
        except ValueError:
            raise ModelSpecError(f"ratios must be comma-separated numbers in [0, 1), got {p!r}") from None
        if not 0.0 <= r < 1.0:
            raise ModelSpecError(f"ratio {r:g} is outside [0, 1): it is the fraction of channels removed")
        out.append(r)
    if not out:
        raise ModelSpecError(f"no ratios in {text!r}; give e.g. 0,0.25,0.5,0.75")
    return out


def _import_library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ModelSpecError(f"{name} is not installed; install it (pip install {name}) to use "
                             f"'{name}:' models, or use a zoo name") from None


def _from_torchvision(name: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    tv = _import_library("torchvision")
    models = tv.models
    try:
        return models.get_model(name, weights=None), _DEFAULT_IMAGE_SHAPE
    except (ValueError, KeyError):
        known = sorted(models.list_models()) if hasattr(models, "list_models") else []
        close = [k for k in known if name.lower() in k][:5]
        raise ModelSpecError(f"torchvision has no model {name!r}"
                             + (f"; did you mean one of {close}?" if close else "")) from None


def _from_timm(name: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    timm = _import_library("timm")
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:  # timm: "Unknown model (x)"
        raise ModelSpecError(f"timm cannot build {name!r}: {e}") from None
    cfg = getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    return model, ((1, *size) if size else _DEFAULT_IMAGE_SHAPE)


def _load_module(where: str) -> Any:
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ModelSpecError(f"no such Python file: {where}")
        mod_name = f"_surgeon_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ModelSpecError(f"importing {where} failed: {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        raise ModelSpecError(f"cannot import module {where!r} ({e})") from None
    except Exception as e:
        raise ModelSpecError(f"importing {where!r} failed: {type(e).__name__}: {e}") from e


def _from_import_path(spec: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    where, _, attr = spec.rpartition(":")
    obj: Any = _load_module(where)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSpecError(f"{where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    shape = getattr(obj, "input_shape", None)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise ModelSpecError(f"{spec} is a {type(obj).__name__}, not a model factory or nn.Module")
        try:
            obj = obj()
        except Exception as e:
            raise ModelSpecError(f"calling {spec}() failed: {type(e).__name__}: {e}") from e
        shape = shape or getattr(obj, "input_shape", None)
    if not isinstance(obj, nn.Module):
        raise ModelSpecError(f"{spec}() returned a {type(obj).__name__}, not an nn.Module")
    return obj, (tuple(shape) if shape else None)


def resolve_model(spec: str, input_shape: str | Sequence[int] | None = None) -> Resolved:
    """Build the model named by ``spec`` (see the module docstring) in eval mode."""
    import surgeon_models as zoo

    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("MODEL is empty; give a zoo name (e.g. resnet50) or package.module:factory")
    spec = spec.strip()
    shape = parse_input_shape(input_shape)
    if spec in zoo.names():
        model, default = zoo.get(spec), zoo.input_shape(spec)
    elif spec.startswith("torchvision:"):
        model, default = _from_torchvision(spec.split(":", 1)[1])
    elif spec.startswith("timm:"):
        model, default = _from_timm(spec.split(":", 1)[1])
    elif ":" in spec:
        model, default = _from_import_path(spec)
    else:
        raise ModelSpecError(f"unknown model {spec!r}; give a zoo name ({', '.join(zoo.names())}), "
                             "package.module:factory, file.py:factory, torchvision:NAME or timm:NAME")
    shape = shape or default
    if shape is None:
        raise ModelSpecError(f"{spec} does not say what input it takes; pass --input-shape, "
                             "e.g. --input-shape 1,3,224,224")
    return Resolved(spec, model.eval(), tuple(int(d) for d in shape))
