"""Dependency-graph pictures: colours follow the groups, frozen is grey, every format is well formed."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import networkx as nx
import pytest
import torch

import surgeon
import surgeon_models as zoo
from surgeon.viz import FROZEN, draw, layered_layout, view_graph


@pytest.fixture(scope="module")
def tiny_graph() -> surgeon.ChannelGraph:
    """tinynet: one prunable residual group (conv1, bn1, conv2, bn2, fc inputs), input and output frozen."""
    return surgeon.trace(zoo.get("tinynet").eval(), torch.randn(1, 3, 16, 16), warn=False)


@pytest.fixture(scope="module")
def resnet_graph() -> surgeon.ChannelGraph:
    """CIFAR ResNet-56: identity residuals couple every block's second conv with the stage's trunk."""
    return surgeon.trace(zoo.get("resnet56").eval(), torch.randn(1, 3, 32, 32), warn=False)


def test_layers_view_colours_coupled_layers_alike(tiny_graph):
    v = view_graph(tiny_graph, "layers")
    colour = {n: d["colour"] for n, d in v.nodes(data=True)}
    coupled = ["conv1", "bn1", "relu", "conv2", "bn2", "add", "relu_1", "flatten"]
    assert len({colour[n] for n in coupled}) == 1 and colour["conv1"] != FROZEN
    assert colour["x"] == FROZEN and colour["fc"] == FROZEN and colour["output"] == FROZEN
    assert v.has_edge("relu", "add") and v.has_edge("bn2", "add")  # the residual is drawn
    assert v.nodes["conv1"]["shape"] == "box" and v.nodes["add"]["shape"] == "ellipse"
    assert "input channels: group 0" in v.nodes["conv1"]["tooltip"]


def test_layers_view_on_residual_stages(resnet_graph):
    v = view_graph(resnet_graph, "layers")
    group = {d["label"]: d["group"] for _, d in v.nodes(data=True)}
    # identity shortcuts: the stem and every block's second BN of stage 1 are one group ...
    assert group["bn1"] == group["layer1.0.bn2"] == group["layer1.8.bn2"]
    # ... while each block's first conv is a group of its own
    assert group["layer1.0.conv1"] != group["layer1.1.conv1"] != group["bn1"]


def test_positions_view_components_are_the_groups(tiny_graph):
    v = view_graph(tiny_graph, "positions")
    comps = list(nx.weakly_connected_components(v))
    assert len(comps) == len(tiny_graph.groups) == 3
    for comp in comps:
        assert len({v.nodes[n]["group"] for n in comp}) == 1
    # a module's tensors in one group are one box: bn1's weight, bias and running stats
    assert v.nodes["p:bn1:1"]["label"] == "bn1 (4 tensors)"


def test_layered_layout_points_every_edge_down(resnet_graph):
    v = view_graph(resnet_graph, "layers")
    pos = layered_layout(v)
    assert set(pos) == set(v.nodes)
    assert all(pos[a][1] > pos[b][1] for a, b in v.edges())
    assert len(set(pos.values())) == len(pos)  # no two nodes on the same spot


@pytest.mark.parametrize("view", ["layers", "positions"])
def test_dot_declares_every_node_it_links(tiny_graph, tmp_path, view):
    text = draw(tiny_graph, tmp_path / "g.dot", view=view).read_text()
    assert text.startswith("digraph surgeon {") and text.rstrip().endswith("}")
    declared = set(re.findall(r'^  "([^"]+)" \[label=', text, re.M))
    linked = set(re.findall(r'^  "([^"]+)" -> "([^"]+)";', text, re.M))
    assert declared == set(view_graph(tiny_graph, view).nodes)
    assert linked and all(a in declared and b in declared for a, b in linked)
    assert "\n\n" not in text.split("{", 1)[1]  # tooltips' newlines are escaped, not literal


def test_html_is_self_contained_svg(tiny_graph, tmp_path):
    text = draw(tiny_graph, tmp_path / "g.html").read_text()
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", text, re.S).group(0))
    ns = "{http://www.w3.org/2000/svg}"
    nodes = [g for g in svg.iter(f"{ns}g") if g.get("class") == "n"]
    assert len(nodes) == view_graph(tiny_graph).number_of_nodes()
    assert {g.get("data-g") for g in nodes if g.get("data-g")} == {"0", "1", "2"}
    assert "<script src" not in text and "href=" not in text and "http" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert text.count('<tr class="row"') == 3  # the group table


def test_png_is_an_image(tiny_graph, tmp_path):
    from PIL import Image

    path = draw(tiny_graph, tmp_path / "g.png", view="positions")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_bad_format_and_view_are_refused(tiny_graph, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.html, \.png, \.dot"):
        draw(tiny_graph, tmp_path / "g.svg")
    with pytest.raises(ValueError, match="unknown graph view 'modules'"):
        draw(tiny_graph, tmp_path / "g.dot", view="modules")
