"""``surgeon.load_weights``: a plain state_dict file into a fresh dense model. The CLI's ``--weights``
(and every bad file's one-line error) is tested in test_cli.py; here the layouts accepted, the prefix
rule's limits and that a failed load changes nothing."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import surgeon
from surgeon.weights import StrippedPrefixWarning, load_weights
from surgeon_models.tinynet import tinynet


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return tinynet().state_dict()


def _equal(model: nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    got = model.state_dict()
    return got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"state": {}}, "epoch": 9},  # PyTorch tutorial
    lambda sd: {"state_dict": sd, "ema": {"decay": 0.999}},
], ids=["bare", "model_state_dict", "state_dict"])
def test_loads_every_tensor(tmp_path, wrap):
    sd = _state(1)
    torch.save(wrap(sd), tmp_path / "w.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note for these layouts
        model = load_weights(tinynet(), tmp_path / "w.pt")
    assert _equal(model, sd)
    assert surgeon.load_weights is load_weights


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "model."])
def test_wrapper_prefixes_are_stripped_with_a_warning(tmp_path, prefix):
    sd = _state(2)
    full = {prefix + k: v for k, v in sd.items()}
    torch.save(full, tmp_path / "w.pt")
    with pytest.warns(StrippedPrefixWarning, match=f"removed the prefix '{prefix}' from every key"):
        assert _equal(load_weights(tinynet(), tmp_path / "w.pt"), sd)


def test_a_prefix_the_model_has_is_kept(tmp_path):
    """A model whose only top-level module is called ``model``: its keys start with ``model.`` too."""
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = tinynet()

    torch.manual_seed(3)
    sd = Holder().state_dict()
    torch.save(sd, tmp_path / "w.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _equal(load_weights(Holder(), tmp_path / "w.pt"), sd)


def test_stripping_keeps_the_version_metadata():
    """load_state_dict reads each module's version from ``_metadata``; it follows the stripped keys."""
    from surgeon.weights import _without_prefix

    sd = nn.DataParallel(tinynet()).state_dict()  # keys and metadata "module.conv1..."
    meta = _without_prefix(sd, "module.")._metadata
    assert set(meta) == set(tinynet().state_dict()._metadata)
    assert meta["bn1"]["version"] == nn.BatchNorm2d._version


@pytest.mark.parametrize("bad, message", [
    ({"fc.weight": torch.zeros(3)}, r"missing from the file: 13 of the model's 14 \(conv1.weight, bn1.weight, "
                                    r"bn1.bias \+10 more\)"),
    ({**_state(), "fc.weight": torch.zeros(10, 3)}, r"fc.weight is 10x3 in the file but 10x2048 in the model; "
                                                    r"weights for another configuration of TinyNet"),
])
def test_a_failed_load_changes_nothing(tmp_path, bad, message):
    model = tinynet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(bad, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=message):
        load_weights(model, tmp_path / "w.pt")
    assert _equal(model, before)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.pt"):
        load_weights(tinynet(), tmp_path / "nope.pt")
