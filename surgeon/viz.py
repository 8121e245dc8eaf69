"""Pictures of the channel-dependency graph: which layers are coupled.

Two views of a ``ChannelGraph``:

* ``layers`` (default): one node per fx node that computes a tensor (conv, BN, add, flatten...),
  edges along the data flow, each node coloured by the group of its channel position (the output
  dim the groups couple, dim 1 for NCHW). Same colour = channels that must be removed together.
* ``positions``: the raw position graph restricted to the groups (activations as ellipses,
  parameters as boxes, a module's tensors in one group merged into one box); its components are
  the groups themselves.

Prunable groups get colours from a fixed palette; frozen groups are grey; positions outside every
group are white. Formats, chosen by the file suffix: ``.dot`` (Graphviz source, written by hand),
``.html`` (one self-contained file: inline SVG, a group table, hover / click highlights the group;
no external scripts) and ``.png`` (matplotlib, layered layout).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from .trace import ChannelGraph
from .groups import Group
from .indexmap import Pos

__all__ = ["FORMATS", "VIEWS", "view_graph", "layered_layout", "to_dot", "to_html", "to_png", "draw"]

FORMATS = (".html", ".png", ".dot")
VIEWS = ("layers", "positions")
FROZEN = "#c8c8c8"
NO_GROUP = "#ffffff"
_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
            "#9c755f", "#8cd17d", "#86bcb6", "#f1ce63", "#a0cbe8", "#ffbe7d", "#d37295", "#b6992d",
            "#499894", "#fabfd2", "#79706e", "#d4a6c8"]


@dataclass(frozen=True)
class _Legend:
    group: int
    colour: str
    channels: int
    state: str
    layers: list[str]


def group_colour(g: Group) -> str:
    if not g.prunable:
        return FROZEN
    return _PALETTE[g.id % len(_PALETTE)]


def _legend(cg: ChannelGraph) -> list[_Legend]:
    return [_Legend(g.id, group_colour(g), g.n, "prunable" if g.prunable else f"frozen: {g.frozen_reason()}",
                    g.layers) for g in cg.groups]


def _group_of(cg: ChannelGraph) -> dict[Pos, Group]:
    return {p: g for g in cg.groups for p in g.channel_of}


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _layers_view(cg: ChannelGraph) -> nx.DiGraph:
    from .context import op_label

    of = _group_of(cg)
    modules = dict(cg.model.named_modules())
    v = nx.DiGraph()
    for node in cg.traced.gm.graph.nodes:
        shape = cg.traced.shape(node)
        if node.op == "output":
            srcs = [a for a in node.all_input_nodes if a.name in v]
            shape = cg.traced.shape(srcs[0]) if srcs else None
        if shape is None:
            continue  # sizes, tuples of sizes: no channels
        refs = [Pos("t", node.name, d) for d in range(len(shape))]
        if node.op == "output":
            refs = [Pos("t", a.name, d) for a in node.all_input_nodes for d in range(len(shape))]
        grouped = [p for p in refs if p in of]
        # the channel position: dim 1 if it is grouped, else the one of the largest prunable group
        pick = next((p for p in grouped if p.dim == 1),
                    max(grouped, key=lambda p: (of[p].prunable, of[p].n), default=None))
        g = of.get(pick) if pick is not None else None
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        op = "input" if node.op == "placeholder" else "output" if node.op == "output" else op_label(node, module)
        name = str(node.target) if node.op == "call_module" else node.name
        has_params = module is not None and any(True for _ in module.parameters(recurse=False))
        tip = [f"{name}: {op}", f"shape {tuple(shape)}"]
        if g is not None:
            tip.append(f"group {g.id} ({g.n} channels, {'prunable' if g.prunable else 'frozen: ' + g.frozen_reason()})")
        if module is not None and node.args and hasattr(node.args[0], "name"):
            ins = [Pos("t", node.args[0].name, d) for d in range(len(cg.traced.shape(node.args[0]) or ()))]
            gin = next((of[p] for p in ins if p in of and p.dim == 1), None)
            if gin is not None and (g is None or gin.id != g.id):
                tip.append(f"input channels: group {gin.id}")
        v.add_node(node.name, label=_short(name), op=op, group=g.id if g is not None else None,
                   colour=group_colour(g) if g is not None else NO_GROUP,
                   shape="box" if has_params else "ellipse", tooltip="\n".join(tip))
    for node in cg.traced.gm.graph.nodes:
        for src in node.all_input_nodes:
            if src.name in v and node.name in v:
                v.add_edge(src.name, node.name)
    return v


def _positions_view(cg: ChannelGraph) -> nx.DiGraph:
    of = _group_of(cg)

    def key(p: Pos) -> str:
        if p.kind == "p":
            owner = p.ref.rsplit(".", 1)[0] if "." in p.ref else p.ref
            return f"p:{owner}:{of[p].id}"
        return f"t:{p.ref}:{p.dim}"

    v = nx.DiGraph()
    members: dict[str, list[Pos]] = {}
    for p in sorted(of, key=lambda p: cg.nx.nodes[p].get("order", 0)):
        members.setdefault(key(p), []).append(p)
    for k, ps in members.items():
        g, p0 = of[ps[0]], ps[0]
        if p0.kind == "p":
            owner = k.split(":", 1)[1].rsplit(":", 1)[0]
            tensors = [f"{q.ref.rsplit('.', 1)[-1]}[{q.dim}]" for q in ps]
            label = f"{owner} ({tensors[0]})" if len(ps) == 1 else f"{owner} ({len(ps)} tensors)"
            tip = f"{owner}: " + ", ".join(tensors)
        else:
            label = p0.ref if p0.dim == 1 else f"{p0.ref}[{p0.dim}]"
            tip = f"activation {p0.ref}, dim {p0.dim}"
        tip += f"\nsize {cg.size(p0)}\ngroup {g.id} ({'prunable' if g.prunable else 'frozen: ' + g.frozen_reason()})"
        v.add_node(k, label=_short(label), op="param" if p0.kind == "p" else "activation", group=g.id,
                   colour=group_colour(g), shape="box" if p0.kind == "p" else "ellipse", tooltip=tip)
    for a, b in cg.nx.edges():
        if a in of and b in of and key(a) != key(b):
            v.add_edge(key(a), key(b))
    return v


def view_graph(cg: ChannelGraph, view: str = "layers") -> nx.DiGraph:
    """The graph to draw: nodes carry ``label``, ``group`` (id or None), ``colour``, ``shape``
    (box / ellipse) and ``tooltip``."""
    if view not in VIEWS:
        raise ValueError(f"unknown graph view {view!r}; choose one of {', '.join(VIEWS)}")
    return _layers_view(cg) if view == "layers" else _positions_view(cg)


def layered_layout(v: nx.DiGraph) -> dict[Any, tuple[float, float]]:
    """Top-to-bottom layers by longest path from a source; inside a layer, nodes ordered by the mean
    x of their predecessors (one barycentre pass). Returns (x, y) with y = -layer."""
    rank: dict[Any, int] = {}
    for n in nx.topological_sort(v):
        rank[n] = 1 + max((rank[p] for p in v.predecessors(n)), default=-1)
    layers: dict[int, list[Any]] = {}
    for n, r in rank.items():
        layers.setdefault(r, []).append(n)
    pos: dict[Any, tuple[float, float]] = {}
    for r in sorted(layers):
        nodes = layers[r]
        bary = {n: (sum(pos[p][0] for p in v.predecessors(n)) / max(v.in_degree(n), 1)
                    if v.in_degree(n) else float(i)) for i, n in enumerate(nodes)}
        nodes.sort(key=lambda n: bary[n])
        width = len(nodes)
        for i, n in enumerate(nodes):
            x = i - (width - 1) / 2
            # keep single nodes under their parent, so chains stay straight
            pos[n] = (bary[n] if width == 1 and v.in_degree(n) else x, -float(r))
    return pos


# --------------------------------------------------------------------------------------- writers
def _dot_id(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_label(lines: list[str]) -> str:
    """A quoted Graphviz label whose lines are joined by Graphviz's own line break ``\\n``."""
    return "\\n".join(_dot_id(line)[1:-1] for line in lines).join('""')


def to_dot(cg: ChannelGraph, path: str | Path, view: str = "layers") -> Path:
    """Graphviz source: ``dot -Tsvg graph.dot -o graph.svg``."""
    v = view_graph(cg, view)
    lines = ["digraph surgeon {", "  rankdir=TB;", '  node [style=filled, fontname="Helvetica", fontsize=10];',
             f"  label={_dot_id(_title(cg))};", "  labelloc=t;"]
    for n, d in v.nodes(data=True):
        lab = [d["label"]] + ([f"g{d['group']}"] if d["group"] is not None else [])
        lines.append(f"  {_dot_id(n)} [label={_dot_label(lab)}, "
                     f"shape={d['shape']}, fillcolor={_dot_id(d['colour'])}, tooltip={_dot_id(d['tooltip'])}];")
    for a, b in v.edges():
        lines.append(f"  {_dot_id(a)} -> {_dot_id(b)};")
    lines.append("}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _title(cg: ChannelGraph) -> str:
    n_ok = len(cg.prunable_groups())
    return (f"{type(cg.model).__name__}: {len(cg.groups)} coupled groups, {n_ok} prunable, "
            f"{len(cg.groups) - n_ok} frozen (grey)")


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:Helvetica,Arial,sans-serif;margin:0;display:flex;height:100vh}}
#g{{flex:1;overflow:auto;border-right:1px solid #ccc}} #t{{width:34em;overflow:auto;padding:0 1em;font-size:13px}}
table{{border-collapse:collapse}} td,th{{padding:2px 6px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}}
tr.row{{cursor:pointer}} .sw{{display:inline-block;width:1em;height:1em;border:1px solid #888}}
svg .n{{cursor:pointer}} svg .n text{{font-size:9px;pointer-events:none}}
svg.hl .n,svg.hl .e{{opacity:.15}} svg.hl .on{{opacity:1!important}} tr.on{{background:#ffe}}
</style></head><body>
<div id="g">{svg}</div>
<div id="t"><h3>{title}</h3><p>Same colour = channels removed together. Hover or click a node or a row.</p>
<table><tr><th></th><th>group</th><th>ch.</th><th>state</th><th>layers</th></tr>{rows}</table></div>
<script>
const svg=document.querySelector('svg'),groupOf={groups};let pinned=null;
function show(g){{svg.classList.toggle('hl',g!==null);document.querySelectorAll('.on').forEach(e=>e.classList.remove('on'));
 if(g===null)return;document.querySelectorAll('[data-g="'+g+'"]').forEach(e=>e.classList.add('on'));}}
document.querySelectorAll('[data-g]').forEach(e=>{{e.addEventListener('mouseenter',()=>{{if(pinned===null)show(e.dataset.g)}});
 e.addEventListener('mouseleave',()=>{{if(pinned===null)show(null)}});
 e.addEventListener('click',()=>{{pinned=(pinned===e.dataset.g)?null:e.dataset.g;show(pinned)}});}});
</script></body></html>
"""


def to_html(cg: ChannelGraph, path: str | Path, view: str = "layers") -> Path:
    """One self-contained HTML file: the layered graph as inline SVG plus the group table."""
    v = view_graph(cg, view)
    pos = layered_layout(v)
    sx, sy, w, h = 150.0, 46.0, 130.0, 24.0
    bow_max = 0.8 * sx  # how far an edge that skips layers bows sideways, at most
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    x0, y0 = min(xs), max(ys)

    def at(n: Any) -> tuple[float, float]:
        return (pos[n][0] - x0) * sx + w / 2 + 10, (y0 - pos[n][1]) * sy + h / 2 + 10

    width = (max(xs) - x0) * sx + w + 20 + bow_max / 2
    height = (y0 - min(ys)) * sy + h + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}">']
    for a, b in v.edges():
        (x1, y1), (x2, y2) = at(a), at(b)
        ga = v.nodes[a]["group"]
        g_attr = f' data-g="{ga}"' if ga is not None and ga == v.nodes[b]["group"] else ""
        y1, y2 = y1 + h / 2, y2 - h / 2
        # an edge skipping layers bows sideways so it does not hide behind the chain it skips
        bow = min(0.5 * (y2 - y1), bow_max) if abs(pos[a][1] - pos[b][1]) > 1 else 0.0
        cx, cy = (x1 + x2) / 2 + bow, (y1 + y2) / 2
        parts.append(f'<path class="e"{g_attr} d="M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}" '
                     'fill="none" stroke="#999" stroke-width="1"/>')
    for n, d in v.nodes(data=True):
        x, y = at(n)
        g_attr = f' data-g="{d["group"]}"' if d["group"] is not None else ""
        shape = (f'<rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.0f}" height="{h:.0f}" rx="3"'
                 if d["shape"] == "box" else
                 f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{w / 2:.0f}" ry="{h / 2:.0f}"')
        parts.append(f'<g class="n"{g_attr}><title>{html.escape(d["tooltip"])}</title>{shape} '
                     f'fill="{d["colour"]}" stroke="#555"/><text x="{x:.1f}" y="{y + 3:.1f}" '
                     f'text-anchor="middle">{html.escape(d["label"])}</text></g>')
    parts.append("</svg>")
    rows = []
    for item in _legend(cg):
        layers = ", ".join(item.layers[:8]) + (f" +{len(item.layers) - 8} more" if len(item.layers) > 8 else "")
        rows.append(f'<tr class="row" data-g="{item.group}"><td><span class="sw" style="background:{item.colour}">'
                    f"</span></td><td>{item.group}</td><td>{item.channels}</td><td>{html.escape(item.state)}</td>"
                    f"<td>{html.escape(layers)}</td></tr>")
    groups = json.dumps({str(i.group): i.layers for i in _legend(cg)})
    path = Path(path)
    path.write_text(_HTML.format(title=html.escape(_title(cg)), svg="\n".join(parts), rows="\n".join(rows),
                                 groups=groups.replace("</", "<\\/")))
    return path


def to_png(cg: ChannelGraph, path: str | Path, view: str = "layers", dpi: int = 72) -> Path:
    """A PNG of the layered graph (matplotlib + networkx), with a legend of the prunable groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    v = view_graph(cg, view)
    pos = layered_layout(v)
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    graph_w = min(36.0, 1.0 + 1.4 * (max(xs) - min(xs) + 1))
    fig_w = graph_w + 3.2  # the legend's column
    fig_h = min(120.0, 1.5 + 0.45 * (max(ys) - min(ys) + 1))
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.01, 0.01, graph_w / fig_w - 0.01, 1 - 0.6 / fig_h))
    span = {e: abs(pos[e[0]][1] - pos[e[1]][1]) for e in v.edges()}
    for long, style in ((False, "arc3,rad=0"), (True, "arc3,rad=0.25")):
        edges = [e for e in v.edges() if (span[e] > 1) == long]
        nx.draw_networkx_edges(v, pos, edgelist=edges, ax=ax, edge_color="#999999", arrows=True, arrowsize=6,
                               width=0.8, node_size=600, connectionstyle=style)
    for shape, marker in (("box", "s"), ("ellipse", "o")):
        nodes = [n for n, d in v.nodes(data=True) if d["shape"] == shape]
        nx.draw_networkx_nodes(v, pos, nodelist=nodes, ax=ax, node_shape=marker, node_size=600,
                               node_color=[v.nodes[n]["colour"] for n in nodes], edgecolors="#555555",
                               linewidths=0.6)
    nx.draw_networkx_labels(v, pos, labels={n: d["label"] for n, d in v.nodes(data=True)}, ax=ax, font_size=6)
    ax.margins(x=0.5 / max(graph_w, 1), y=0.5 / max(fig_h, 1))
    legend = [Patch(facecolor=i.colour, edgecolor="#555555",
                    label=f"g{i.group}: {i.channels} ch, {_short(', '.join(i.layers[:2]), 30)}")
              for i in _legend(cg) if i.colour != FROZEN][:40]
    legend.append(Patch(facecolor=FROZEN, edgecolor="#555555", label="frozen"))
    fig.legend(handles=legend, loc="upper right", fontsize=6, frameon=False)
    fig.text(0.01, 1 - 0.25 / fig_h, _title(cg), fontsize=9, va="top")
    ax.axis("off")
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def draw(cg: ChannelGraph, path: str | Path, view: str = "layers") -> Path:
    """Write the dependency graph to ``path``; the suffix (.html, .png, .dot) picks the format."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot draw to {path.name!r}: the file must end in {', '.join(FORMATS)}")
    if view not in VIEWS:
        raise ValueError(f"unknown graph view {view!r}; choose one of {', '.join(VIEWS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return {".html": to_html, ".png": to_png, ".dot": to_dot}[suffix](cg, path, view=view)
