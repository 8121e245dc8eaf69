"""A model's call as an ONNX file sees it: positional tensors in, a flat list of tensors out.

Shared by the exporter (:mod:`surgeon.export`) and the parity check (:mod:`surgeon.runtime`), so
that both call the model the same way: keyword inputs (``model(input_ids=..., attention_mask=...)``)
become positional ones in the keywords' order, a nested or dataclass output (Hugging Face
``ModelOutput``) becomes its tensors in the order the exporters emit them, and the model runs in
eval mode under ``torch.no_grad`` with every submodule's own train/eval flag restored.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .capture import as_input_tuple, eval_mode

__all__ = ["check_model", "export_inputs", "flat_outputs", "positional", "eval_no_grad"]


def check_model(model: Any) -> nn.Module:
    """``model`` itself, or ``TypeError`` when it is not a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def export_inputs(example_inputs: Any, *, need_batch: bool) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_inputs`` (see ``surgeon.capture.as_input_tuple``); a dynamic batch also
    needs every input to have a batch dimension."""
    inputs = as_input_tuple(example_inputs)
    for i, t in enumerate(inputs):
        if need_batch and t.dim() == 0:
            raise ValueError(
                f"example_inputs[{i}] is a 0-d tensor and has no batch dimension; "
                "pass dynamic_batch=False to export it with a static shape"
            )
    return inputs


def flat_outputs(obj: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) model output in the order the exporters emit them."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in flat_outputs(item)]
    if isinstance(obj, Mapping):
        return [t for item in obj.values() for t in flat_outputs(item)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in flat_outputs(getattr(obj, f.name))]
    return []


class _Positional(nn.Module):
    """Exports a model called with keyword inputs or returning a dataclass: positional tensors in,
    the output's tensors out as a flat tuple, in ``record.flatten_tensors`` order. The ONNX inputs
    are in ``names`` order."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from .record import flatten_tensors
        out = self.model(**dict(zip(self.names, tensors))) if self.names else self.model(*tensors)
        return tuple(flatten_tensors(out))


def positional(model: nn.Module, example_inputs: Any) -> tuple[nn.Module, Any]:
    """(model, inputs) as the exporters take them: keyword inputs and dataclass outputs adapted."""
    if isinstance(example_inputs, Mapping):
        bad = [k for k, v in example_inputs.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"keyword example input {bad[0]!r} must be a torch.Tensor to export it")
        return _Positional(model, list(example_inputs)), tuple(example_inputs.values())
    return model, example_inputs


@contextlib.contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (every submodule's own flag restored afterwards, see ``capture.eval_mode``) under
    ``torch.no_grad``."""
    with eval_mode(model), torch.no_grad():
        yield model
