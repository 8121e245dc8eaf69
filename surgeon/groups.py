"""Step 3: coupled channel groups.

A group is a connected component of the position graph that contains parameters. Inside it, the
edges' index maps are resolved element by element (scipy connected components over individual
channel indices) into *channels*: a channel is the set of (position, index) entries that must be
removed together, e.g. output 5 of conv A, entry 5 of the BN after it, input 5 of the next conv and
features [5*49, 6*49) of a Linear after a flatten.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .context import Fixed
from .indexmap import Pos

__all__ = ["Group", "find_groups"]


@dataclass
class Group:
    """Positions that shrink together, and which channel each of their indices belongs to.

    id: stable number in the graph's group list.
    n: number of channels (units that are removed together).
    channel_of: for each position, an int array giving the channel of each index along it.
    fixed: why the group cannot shrink (empty when it is prunable).
    mixing: a member normalises across channels (LayerNorm), so removal is not an exact zeroing.
    aligned: index i of every member is channel i (most groups: conv -> BN -> act -> conv), so
        per-index scores are per-channel scores as they are.
    """

    id: int
    n: int
    channel_of: dict[Pos, np.ndarray]
    fixed: list[Fixed] = field(default_factory=list)
    mixing: bool = False
    aligned: bool = False  # every member has n indices and index i is channel i (no concat, flatten...)

    @property
    def prunable(self) -> bool:
        return not self.fixed and self.n > 1

    @property
    def params(self) -> list[Pos]:
        return [p for p in self.channel_of if p.kind == "p"]

    @property
    def layers(self) -> list[str]:
        """Qualified names of the modules owning the group's parameters, in order of appearance."""
        seen: dict[str, None] = {}
        for p in self.params:
            seen.setdefault(p.ref.rsplit(".", 1)[0] if "." in p.ref else "", None)
        return list(seen)

    @property
    def unexpected_fixes(self) -> list[Fixed]:
        """Fix reasons worth a warning: anything but the ``expected`` ones (the model's own inputs
        and outputs)."""
        return [f for f in self.fixed if not f.expected]

    def frozen_reason(self) -> str:
        if not self.fixed:
            return "" if self.n > 1 else "a single channel"
        reasons = list(dict.fromkeys(str(f) for f in (self.unexpected_fixes or self.fixed)))
        return "; ".join(reasons[:3]) + (f"; +{len(reasons) - 3} more" if len(reasons) > 3 else "")

    def removed_indices(self, channels: Iterable[int]) -> dict[Pos, np.ndarray]:
        """Sorted indices each position loses when ``channels`` are removed."""
        gone = np.zeros(self.n, dtype=bool)
        gone[np.asarray(list(channels), dtype=np.int64)] = True
        if self.aligned:  # index i is channel i everywhere: one answer for every position
            idx = np.flatnonzero(gone)
            return {p: idx for p in self.channel_of}
        return {p: np.flatnonzero(gone[ch]) for p, ch in self.channel_of.items()}

    def __str__(self) -> str:
        state = "prunable" if self.prunable else f"frozen: {self.frozen_reason()}"
        members = ", ".join(str(p) for p in self.params)
        return f"group {self.id}: {self.n} channels, {state}\n  params: {members}"


def _is_range(a: np.ndarray) -> bool:
    """a == [0, 1, ..., len(a) - 1]."""
    return len(a) == 0 or (a[0] == 0 and a[-1] == len(a) - 1 and bool((np.diff(a) == 1).all()))


def _channels(g: nx.DiGraph, positions: list[Pos]) -> tuple[int, dict[Pos, np.ndarray], bool]:
    """Resolve a component's index maps into channel ids per position."""
    # a component is closed under edges, so each position's out-edges are the component's edges
    edges = [(a, b, data["map"]) for a in positions for b, data in g.succ[a].items()]
    sizes = {g.nodes[p]["size"] for p in positions}
    if len(sizes) == 1:  # most groups (conv -> BN -> act -> conv): every map i ~ i, so channel i is index i
        n = sizes.pop()
        if all(m.kind == "identity" or (len(m.src) == n and _is_range(m.src) and _is_range(m.dst))
               for _, _, m in edges):
            channels = np.arange(n)
            channels.flags.writeable = False
            return n, {p: channels for p in positions}, True
    offset: dict[Pos, int] = {}
    total = 0
    for p in positions:
        offset[p] = total
        total += g.nodes[p]["size"]
    rows, cols = [], []
    for a, b, m in edges:
        rows.append(m.src + offset[a])
        cols.append(m.dst + offset[b])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    adj = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(total, total))
    _, labels = connected_components(adj, directed=False)
    # Number channels in the order they first appear along the anchor (the largest parameter
    # position whose indices are all distinct channels, typically the producing conv's output).
    anchors = [p for p in positions if p.kind == "p"] or positions
    anchor = max(anchors, key=lambda p: (len(np.unique(labels[offset[p]:offset[p] + g.nodes[p]["size"]]))
                                         == g.nodes[p]["size"], g.nodes[p]["size"]))
    order = np.concatenate([labels[offset[anchor]:offset[anchor] + g.nodes[anchor]["size"]], labels])
    _, first = np.unique(order, return_index=True)
    rank = np.empty(labels.max() + 1, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    labels = rank[labels]
    return len(first), {p: labels[offset[p]:offset[p] + g.nodes[p]["size"]] for p in positions}, False


def check_sizes(g: nx.DiGraph) -> None:
    """A size computed at run time (``args.size_kind`` "free") follows the cut only if it is read
    off a tensor dim in the same coupled group as the dim it sizes: ``b.view(n, a.size(1), -1)``
    with ``a`` in another group, or Swin's ``qkv.reshape(..., C // num_heads)`` with ``C`` the
    residual width, would break (or silently reshape wrongly) after a cut. Both dims are fixed then."""
    deps = g.graph.get("size_deps", [])
    if not deps:
        return
    comp: dict[Pos, int] = {}
    for i, c in enumerate(nx.weakly_connected_components(g)):
        for p in c:
            comp[p] = i
    for sources, target, where in deps:
        if target not in comp:
            continue
        ok = sources is not None and all(s in comp and comp[s] == comp[target] for s in sources)
        if ok:
            continue
        origin = "of unknown origin" if sources is None else "read off another tensor's size"
        why = Fixed(f"size {origin} in {where}", where.split("node ")[-1].split(",")[0].rstrip(")"))
        for p in [target] + [s for s in (sources or []) if s in comp]:
            if why not in g.nodes[p]["fixed"]:
                g.nodes[p]["fixed"].append(why)


def find_groups(g: nx.DiGraph) -> list[Group]:
    """Every connected component of ``g`` that holds parameters, as a Group."""
    groups: list[Group] = []
    for comp in nx.weakly_connected_components(g):
        positions = sorted(comp, key=lambda p: (p.kind != "p", g.nodes[p].get("order", 0)))
        if not any(p.kind == "p" for p in positions):
            continue
        n, channel_of, aligned = _channels(g, positions)
        fixed = [f for p in positions for f in g.nodes[p]["fixed"]]
        mixing = any(g.nodes[p].get("mixing", False) for p in positions)
        groups.append(Group(0, n, channel_of, list(dict.fromkeys(fixed)), mixing, aligned))
    groups.sort(key=lambda gr: min(g.nodes[p]["order"] for p in gr.channel_of))
    for i, gr in enumerate(groups):
        gr.id = i
    return groups
