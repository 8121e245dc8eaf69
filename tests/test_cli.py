"""The ``surgeon`` command line: every subcommand on tinynet, and every user-mistake path ends in one
line on stderr and a non-zero exit code, never a stack trace.

Most tests call ``surgeon.cli.main`` in-process (a subprocess pays ~3 s of imports); a few run the
installed entry point to prove the wiring, the exit codes and the silence of torch's own logging.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from surgeon.cli import main
from surgeon.runtime import onnx_session, run_onnx
from surgeon.resolve import ModelSpecError, parse_input_shape, parse_ratios, resolve_model

TINY_INPUT = torch.randn(2, 3, 16, 16)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); argparse's SystemExit counts as an exit code."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    """`surgeon prune tinynet --ratio 0.5` written once for the tests that read its outputs."""
    out = tmp_path_factory.mktemp("pruned")
    assert main(["prune", "tinynet", "--ratio", "0.5", "--round-to", "2", "-o", str(out), "--runs", "3", "-q"]) == 0
    return out


# ------------------------------------------------------------------------------------- --help
@pytest.mark.parametrize("argv", [[], ["inspect"], ["prune"], ["bench"], ["export"]])
def test_help_everywhere(capsys, argv):
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    assert out.startswith("usage: surgeon")
    assert ("--quiet" in out) == bool(argv)  # every subcommand has the common flags


def test_no_command_is_a_one_line_usage_error(capsys):
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "required" in err


# ------------------------------------------------------------------------------------ inspect
def test_inspect_prints_the_coupled_groups(capsys):
    code, out, err = run(capsys, "inspect", "tinynet", "-q")
    assert code == 0, err
    assert "frozen: model input" in out and "frozen: model output" in out
    # the residual couples both convs and both BNs into one prunable group
    line = next(l for l in out.splitlines() if " prunable " in f" {l} ")
    assert "conv1, bn1, conv2, bn2" in line and line.split()[1] == "8"
    assert out.strip().endswith("3 groups: 1 prunable, 2 frozen")


def test_inspect_json_lists_every_member(capsys):
    code, out, _ = run(capsys, "inspect", "tinynet", "--json", "-q")
    assert code == 0
    data = json.loads(out)
    assert data["input_shape"] == [1, 3, 16, 16]
    prunable = [g for g in data["groups"] if g["prunable"]]
    assert len(data["groups"]) == 3 and len(prunable) == 1
    assert set(prunable[0]["members"]) == {"conv1", "bn1", "conv2", "bn2", "fc"}
    assert all(g["why_frozen"] for g in data["groups"] if not g["prunable"])


@pytest.mark.parametrize("suffix, magic", [(".html", b"<!DOCTYPE html>"), (".png", b"\x89PNG"), (".dot", b"digraph")])
def test_inspect_draws_the_graph(capsys, tmp_path, suffix, magic):
    path = tmp_path / f"g{suffix}"
    code, out, _ = run(capsys, "inspect", "tinynet", "--graph", str(path), "-q")
    assert code == 0 and f"graph written to {path}" in out
    assert path.read_bytes().startswith(magic)


# -------------------------------------------------------------------------------------- prune
def test_prune_writes_checkpoint_onnx_and_summary(pruned_dir, capsys):
    for name in ("model.pt", "model.json", "model.onnx", "summary.json", "plan.txt"):
        assert (pruned_dir / name).is_file(), name
    assert not (pruned_dir / ".dense.onnx").exists()
    s = json.loads((pruned_dir / "summary.json").read_text())
    assert s["model"] == "tinynet" and s["ratio"] == 0.5 and s["round_to"] == 2
    assert s["params"]["after"] < s["params"]["before"] and s["macs"]["after"] < s["macs"]["before"]
    assert s["onnx_bytes"]["after"] < s["onnx_bytes"]["before"]
    assert set(s["latency_ms"]) == {"torch/b1", "ort/b1"}
    assert all(v["before"] > 0 and v["after"] > 0 for v in s["latency_ms"].values())
    meta = json.loads((pruned_dir / "model.json").read_text())
    assert meta["model"] == "tinynet" and meta["input_shape"] == [1, 3, 16, 16]
    # the ONNX file is the pruned model: 8 -> 4 channels, and it runs at another batch size
    (y,) = run_onnx(onnx_session(pruned_dir / "model.onnx"), TINY_INPUT)
    assert y.shape == (2, 10)
    assert "group   1:     8 ->     4 channels" in (pruned_dir / "plan.txt").read_text()


def test_prune_prints_before_after_table(capsys, tmp_path):
    code, out, err = run(capsys, "prune", "tinynet", "--ratio", "0.25", "-o", str(tmp_path), "--no-latency", "-q")
    assert code == 0, err
    rows = {l.split()[0]: l.split() for l in out.splitlines() if l.startswith(("params", "MACs"))}
    assert rows["params"][1:3] == ["21.3", "K"] and float(rows["params"][-1].rstrip("x")) < 1
    assert "latency" not in out and (tmp_path / "model.onnx").is_file()


def test_prune_ignore_keeps_outputs_and_lets_inputs_shrink(capsys, tmp_path):
    """--ignore fc on tinynet: fc's outputs are the model's anyway, the residual stream it reads
    still shrinks (8 -> 4 channels); --freeze fc would leave nothing to prune (see BAD)."""
    code, out, err = run(capsys, "prune", "tinynet", "--ignore", "fc", "-o", str(tmp_path), "--no-onnx",
                         "--no-latency", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "model.json").read_text())["ignore"] == ["fc"]
    assert "group   1:     8 ->     4 channels" in (tmp_path / "plan.txt").read_text()


def test_inspect_with_the_concrete_tracer(capsys):
    code, out, _ = run(capsys, "inspect", "tinynet", "--tracer", "concrete", "-q")
    assert code == 0 and "1 prunable" in out


def test_prune_to_a_macs_target(capsys, tmp_path):
    code, out, err = run(capsys, "prune", "tinynet", "--target-macs", "0.5", "-o", str(tmp_path), "--no-onnx",
                         "--no-latency", "-q")
    assert code == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert "ratio" not in s and s["target_macs"] == 0.5
    assert 0.3 < s["macs"]["after"] / s["macs"]["before"] <= 0.55  # within one channel step of the target
    assert "target macs 0.5" in out and not (tmp_path / "model.onnx").exists()


def test_export_rebuilds_the_pruned_architecture(pruned_dir, capsys, tmp_path):
    target = tmp_path / "again.onnx"
    code, out, err = run(capsys, "export", str(pruned_dir / "model.pt"), "-o", str(target), "-q")
    assert code == 0, err
    assert f"wrote {target}" in out
    a = run_onnx(onnx_session(target), TINY_INPUT)[0]
    b = run_onnx(onnx_session(pruned_dir / "model.onnx"), TINY_INPUT)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_export_without_sidecar_takes_model_flag(pruned_dir, capsys, tmp_path):
    ckpt = tmp_path / "lonely.pt"
    shutil.copy(pruned_dir / "model.pt", ckpt)
    code, _, err = run(capsys, "export", str(ckpt), "--model", "tinynet", "-q")
    assert code == 0, err
    assert ckpt.with_suffix(".onnx").is_file()


# -------------------------------------------------------------------------------------- bench
def test_bench_quick_compares_every_method(capsys, tmp_path):
    code, out, err = run(capsys, "bench", "tinynet", "--quick", "--ratios", "0,0.5", "--batches", "1",
                         "-o", str(tmp_path), "--no-plots", "-q")
    assert code == 0, err
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in data["rows"]} == {"dense", "mask", "surgeon", "torch-pruning"}
    assert all(set(r["latency"]) == {"torch/b1", "ort/b1"} for r in data["rows"])
    assert "| 0.5 | surgeon |" in out and "realised/theory" in out
    assert not list(tmp_path.glob("*.png"))


# ------------------------------------------------------------------------------------ --weights
SMALL = [0, 3, 5, 6]  # tinynet channels made ~1000x smaller in the saved weights: L1 removes exactly these
KEPT = [1, 2, 4, 7]


def trained_tinynet() -> dict[str, torch.Tensor]:
    """A tinynet state_dict unlike any random init: every tensor of channels SMALL scaled by 1e-3
    (conv1 / conv2 filters, both BNs, conv2's inputs, fc's columns), BN running stats set."""
    torch.manual_seed(1)
    sd = {k: v.clone() for k, v in resolve_model("tinynet").model.state_dict().items()}
    for k in ("conv1.weight", "conv2.weight", "bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"):
        sd[k][SMALL] *= 1e-3
    sd["conv2.weight"][:, SMALL] *= 1e-3
    sd["fc.weight"].view(10, 8, 256)[:, SMALL] *= 1e-3  # flatten: channel c is columns c*256 .. c*256+255
    for k in ("bn1.running_mean", "bn2.running_mean"):
        sd[k].copy_(torch.randn(8))
    for k in ("bn1.running_var", "bn2.running_var"):
        sd[k].copy_(torch.rand(8) + 0.5)
    return sd


def assert_kept_weights(out_dir: Path, sd: dict[str, torch.Tensor]) -> None:
    """The pruned checkpoint holds exactly the saved tensors at KEPT (conv2 and fc along their inputs too)."""
    from surgeon.checkpoint import load

    got = load(resolve_model("tinynet").model, out_dir / "model.pt").state_dict()
    for k in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
              "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var"):
        torch.testing.assert_close(got[k], sd[k][KEPT], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(got["conv2.weight"], sd["conv2.weight"][KEPT][:, KEPT], rtol=0, atol=0)
    torch.testing.assert_close(got["fc.weight"], sd["fc.weight"].view(10, 8, 256)[:, KEPT].reshape(10, -1),
                               rtol=0, atol=0)
    torch.testing.assert_close(got["fc.bias"], sd["fc.bias"], rtol=0, atol=0)


LAYOUTS = {
    "state_dict": lambda sd: sd,
    "checkpoint['state_dict']": lambda sd: {"state_dict": sd, "epoch": 3, "lr": 0.1},
    "checkpoint['model']": lambda sd: {"model": sd, "optimizer": {"param_groups": [{"lr": 0.1}]}},
    "DDP module. prefix": lambda sd: {f"module.{k}": v for k, v in sd.items()},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prune_uses_the_weights(capsys, tmp_path, layout):
    sd = trained_tinynet()
    torch.save(LAYOUTS[layout](sd), tmp_path / "w.pt")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "prune", "tinynet", "--weights", str(tmp_path / "w.pt"), "--ratio", "0.5",
                            "-o", str(out), "--no-onnx", "--no-latency", "-q")
    assert code == 0, err
    assert_kept_weights(out, sd)
    assert f"weights {tmp_path / 'w.pt'}" in stdout.splitlines()[0]
    assert json.loads((out / "summary.json").read_text())["weights"] == str(tmp_path / "w.pt")
    assert json.loads((out / "model.json").read_text())["weights"] == str(tmp_path / "w.pt")
    if layout.startswith("DDP"):
        assert err.startswith("note: ") and "removed the prefix 'module.'" in err and len(err.splitlines()) == 1
    else:
        assert err == ""


def test_prune_without_weights_keeps_other_channels(capsys, tmp_path):
    """The oracle above is not met by chance: the random-init run keeps other values."""
    code, stdout, err = run(capsys, "prune", "tinynet", "--ratio", "0.5", "-o", str(tmp_path), "--no-onnx",
                            "--no-latency", "-q")
    assert code == 0, err
    assert "random-init weights" in stdout and json.loads((tmp_path / "summary.json").read_text())["weights"] is None
    with pytest.raises(AssertionError):
        assert_kept_weights(tmp_path, trained_tinynet())


def test_inspect_and_bench_take_weights(capsys, tmp_path):
    torch.save(trained_tinynet(), tmp_path / "w.pt")
    w = str(tmp_path / "w.pt")
    code, out, err = run(capsys, "inspect", "tinynet", "--weights", w, "-q")
    assert code == 0, err
    assert out.splitlines()[0] == f"tinynet: input 1x3x16x16, weights {w}"
    code, out, err = run(capsys, "inspect", "tinynet", "--weights", w, "--json", "-q")
    assert code == 0 and json.loads(out)["weights"] == w
    code, out, err = run(capsys, "bench", "tinynet", "--weights", w, "--quick", "--ratios", "0.5", "--batches", "1",
                         "--methods", "dense,surgeon", "-o", str(tmp_path / "bench"), "--no-plots", "-q")
    assert code == 0, err
    assert f"weights {w};" in out
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["meta"]["models"]["tinynet"]["weights"] == w


def _pruned_state_dict() -> dict[str, torch.Tensor]:
    from surgeon import plan

    model = resolve_model("tinynet").model
    plan(model, torch.randn(1, 3, 16, 16), ratio=0.5).apply()
    return model.state_dict()


def _tinynet_classes(n: int) -> dict[str, torch.Tensor]:
    from surgeon_models.tinynet import tinynet

    return tinynet(num_classes=n).state_dict()


BAD_WEIGHTS = {  # file content -> what the one-line error must say
    "missing.pt": (None, "weights file not found: missing.pt"),
    "garbage.pt": (b"not a checkpoint", "garbage.pt is not a file torch.load can read"),
    "whole_model.pt": (lambda: resolve_model("tinynet").model,
                       "holds a pickled surgeon_models.tinynet.TinyNet, not just tensors (a whole model saved with "
                       "torch.save(model)?), which cannot be loaded safely; save the weights instead: "
                       "torch.save(model.state_dict(), path)"),
    "tensor.pt": (lambda: torch.zeros(8, 3), "holds a single tensor of shape 8x3, not a state_dict"),
    "list.pt": (lambda: list(trained_tinynet().values()), "holds a list, not a state_dict"),
    "not_tensors.pt": (lambda: {"epoch": 3, "optimizer": {"lr": 0.1}},
                       "keys 'epoch', 'optimizer' whose values are not all tensors, and none of 'state_dict', "
                       "'model', 'model_state_dict' holds a state_dict"),
    "ambiguous.pt": (lambda: {"state_dict": trained_tinynet(), "model": trained_tinynet()},
                     "several state_dicts (under 'state_dict' and 'model'), which is ambiguous"),
    "resnet20.pt": (lambda: resolve_model("resnet20").model.state_dict(),
                    "does not fit tinynet: missing from the file: 6 of the model's 14 (conv2.weight, bn2.weight, "
                    "bn2.bias +3 more); not in the model: 120 of the file's 128 (layer1.0.conv1.weight, "
                    "layer1.0.bn1.weight, layer1.0.bn1.bias +117 more); weights for another model?"),
    "five_classes.pt": (lambda: _tinynet_classes(5), "fc.weight is 5x2048 in the file but 10x2048 in the model "
                        "(+1 more tensors differ); weights for another configuration of tinynet"),
    "pruned_state_dict.pt": (_pruned_state_dict, "conv1.weight is 4x3x3x3 in the file but 8x3x3x3 in the model "
                             "(+10 more tensors differ); a pruned model's state_dict? It cannot restore the dense "
                             "architecture: save pruned models with surgeon.save(model, path) and load them with "
                             "surgeon.load(fresh_model, path)"),
    "surgeon_checkpoint.pt": ("pruned_dir", "is a pruned model written by surgeon.save (or `surgeon prune -o`), not "
                              "the dense model's state_dict: load it with surgeon.load(model, path), or export it "
                              "with `surgeon export surgeon_checkpoint.pt`"),
}


@pytest.mark.parametrize("command", ["inspect", "prune", "bench"])
@pytest.mark.parametrize("name", BAD_WEIGHTS)
def test_bad_weights_end_in_one_clear_line(capsys, tmp_path, monkeypatch, pruned_dir, name, command):
    content, message = BAD_WEIGHTS[name]
    monkeypatch.chdir(tmp_path)  # relative paths, as typed: the messages fit the 400-character line
    if isinstance(content, bytes):
        Path(name).write_bytes(content)
    elif content == "pruned_dir":
        shutil.copy(pruned_dir / "model.pt", name)
    elif content is not None:
        torch.save(content(), name)
    extra = {"inspect": [], "prune": ["-o", "out"], "bench": ["--quick"]}[command]
    code, out, err = run(capsys, command, "tinynet", "--weights", name, *extra, "-q")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"surgeon {command}: error: ") and message in lines[0], lines[0]
    assert "--verbose for all" not in lines[0] and "rerun with --traceback" not in lines[0]
    assert not Path("out").exists()  # failed before anything was written


def test_weights_that_are_a_directory(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", "tinynet", "--weights", str(tmp_path), "-q")
    assert code == 1 and f"weights path {tmp_path} is a directory" in err


# -------------------------------------------------------------------------- MODEL resolution
def test_import_path_and_file_models(capsys, tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text("import torch.nn as nn\n"
                   "def build():\n"
                   "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))\n"
                   "build.input_shape = (1, 3, 8, 8)\n")
    code, out, err = run(capsys, "inspect", f"{src}:build", "-q")
    assert code == 0, err
    assert "input 1x3x8x8" in out and "1 prunable" in out
    code, out, err = run(capsys, "inspect", "surgeon_models.tinynet:TinyNet", "--input-shape", "1,3,16,16", "-q")
    assert code == 0, err
    assert "3 groups" in out


def test_resolve_helpers():
    assert parse_input_shape("1,3,224,224") == (1, 3, 224, 224) == parse_input_shape("1x3x224x224")
    assert parse_input_shape(None) is None
    assert parse_ratios("0, 0.25,0.5") == [0.0, 0.25, 0.5]
    with pytest.raises(ModelSpecError, match=r"outside \[0, 1\)"):
        parse_ratios("0,1")
    with pytest.raises(ModelSpecError, match="positive"):
        parse_input_shape("1,0,3")
    with pytest.raises(ModelSpecError, match="pass --input-shape"):
        resolve_model("surgeon_models.tinynet:TinyNet")
    r = resolve_model("tinynet")
    assert r.input_shape == (1, 3, 16, 16) and not r.model.training


# -------------------------------------------------------------------------------- error paths
BAD = [
    (["inspect", "nosuch"], 1, "unknown model 'nosuch'"),
    (["inspect", "nosuchpkg.mod:f"], 1, "cannot import module 'nosuchpkg.mod'"),
    (["inspect", "os:getcwd"], 1, "not an nn.Module"),
    (["inspect", "tinynet", "--input-shape", "1,3,a"], 1, "input shape must be"),
    (["inspect", "tinynet", "--input-shape", "1,3,7,7"], 1, "Pass example inputs with the shape"),
    (["inspect", "tinynet", "--graph", "g.svg"], 1, "must end in .html, .png, .dot"),
    (["prune", "tinynet", "--ratio", "1.5", "-o", "{tmp}"], 2, "ratio must be in [0, 1)"),
    (["prune", "tinynet", "--ratio", "half", "-o", "{tmp}"], 2, "ratio must be a number"),
    (["prune", "tinynet", "--round-to", "0", "-o", "{tmp}"], 2, "positive integer"),
    (["prune", "tinynet"], 2, "--output/-o"),
    (["prune", "tinynet", "-o", "{tmp}", "--ignore", "nosuchlayer"], 1, "not a module of the model"),
    (["prune", "tinynet", "-o", "{tmp}", "--criterion", "nosuch"], 1, "unknown criterion 'nosuch'"),
    (["prune", "tinynet", "-o", "{tmp}", "--freeze", "fc"], 1, "nothing prunable"),
    (["prune", "tinynet", "-o", "{tmp}", "--freeze", "nosuchlayer"], 1, "freeze names 'nosuchlayer'"),
    (["prune", "tinynet", "-o", "{tmp}", "--ratio", "0.3", "--target-macs", "0.5"], 1, "not both"),
    (["prune", "tinynet", "-o", "{tmp}", "--target-macs", "0"], 2, "fraction in (0, 1]"),
    (["prune", "tinynet", "-o", "{tmp}", "--keep-outputs", "x"], 2, "output indices"),
    (["prune", "tinynet", "-o", "{tmp}", "--keep-outputs", "3"], 1, "keep_outputs lists output 3"),
    (["inspect", "tinynet", "--tracer", "magic"], 2, "invalid choice"),
    (["bench", "tinynet", "--methods", "dense,foo"], 1, "unknown method(s) foo"),
    (["bench", "tinynet", "--ratios", "0,2"], 2, "outside [0, 1)"),
    (["export", "{tmp}/missing.pt"], 1, "checkpoint not found"),
    (["export", "{tmp}/garbage.pt", "--model", "tinynet"], 1, "not a readable surgeon checkpoint"),
    (["export", "{tmp}/garbage.pt"], 1, "garbage.json (written by `surgeon prune`) is missing"),
]


@pytest.mark.parametrize("argv, code, message", BAD, ids=[" ".join(a[:3]) for a, *_ in BAD])
def test_user_mistakes_end_in_one_line(capsys, tmp_path, argv, code, message):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    got, out, err = run(capsys, *argv, "-q")
    assert got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"surgeon {argv[0]}: error: ") and message in lines[0]
    assert "Traceback" not in err and "rerun with --traceback" not in err


def test_missing_optional_libraries_are_named(capsys):
    for lib in ("torchvision", "timm"):
        try:
            __import__(lib)
            continue
        except ImportError:
            pass
        code, _, err = run(capsys, "inspect", f"{lib}:resnet18")
        assert code == 1 and f"{lib} is not installed" in err and len(err.strip().splitlines()) == 1


def test_traceback_flag_shows_the_exception(capsys):
    with pytest.raises(ModelSpecError):
        main(["inspect", "nosuch", "--traceback"])


# ----------------------------------------------------------------------- installed entry point
def _surgeon() -> list[str]:
    exe = shutil.which("surgeon", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "surgeon.cli"]


def test_entry_point_success_and_failure_exit_codes(tmp_path):
    ok = subprocess.run(_surgeon() + ["inspect", "tinynet", "-q"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "1 prunable" in ok.stdout
    # a wrong input shape: torch would log a fake-tensor traceback; the CLI keeps it to one line
    bad = subprocess.run(_surgeon() + ["inspect", "tinynet", "--input-shape", "1,3,7,7"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
