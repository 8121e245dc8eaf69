"""Tests for surgeon.onnx_io: how the exporter and the parity check call a model (keyword inputs
made positional, nested outputs flattened, eval mode without grad)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from surgeon.onnx_io import check_model, eval_no_grad, export_inputs, flat_outputs, positional


@dataclasses.dataclass
class Output:
    """A Hugging Face style dataclass output."""

    logits: torch.Tensor
    hidden: tuple[torch.Tensor, ...]


class KeywordModel(nn.Module):
    """Called with keywords, returns a dataclass: both need adapting for the exporters."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Output:
        h = self.fc(ids * mask)
        return Output(logits=h.sum(-1), hidden=(h, ids))


def test_keyword_inputs_become_positional_in_keyword_order():
    model = KeywordModel()
    ids, mask = torch.randn(2, 4), torch.ones(2, 4)
    wrapped, inputs = positional(model, {"mask": mask, "ids": ids})
    assert inputs == (mask, ids) and wrapped is not model
    out = wrapped(*inputs)
    want = model(ids=ids, mask=mask)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(torch.equal(a, b) for a, b in zip(out, (want.logits, *want.hidden)))
    assert positional(model, (ids, mask)) == (model, (ids, mask))  # positional inputs: unchanged
    with pytest.raises(TypeError, match="keyword example input 'mask' must be a torch.Tensor"):
        positional(model, {"ids": ids, "mask": 1})


def test_flat_outputs_order_matches_the_exporters():
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    assert flat_outputs((a, {"b": b, "c": [c]}, Output(d, (a,)), "text", None)) == [a, b, c, d, a]


def test_export_inputs_needs_a_batch_dim_only_for_a_dynamic_batch():
    assert export_inputs(torch.tensor(1.0), need_batch=False)[0].dim() == 0
    with pytest.raises(ValueError, match=r"example_inputs\[0\] is a 0-d tensor .* dynamic_batch=False"):
        export_inputs(torch.tensor(1.0), need_batch=True)
    with pytest.raises(TypeError, match="torch.nn.Module, got str"):
        check_model("resnet")


def test_eval_no_grad_restores_each_module_flag():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2)).train()
    model[1].eval()
    with eval_no_grad(model):
        assert not any(m.training for m in model.modules()) and not torch.is_grad_enabled()
    assert model.training and model[0].training and not model[1].training and torch.is_grad_enabled()
