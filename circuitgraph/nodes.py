"""Node and edge identities: ids, enumeration, which source can feed which target.

Hook names live in :mod:`circuitgraph.arch`, never here. Ids follow DESIGN §3: ``input``, ``a3.h5`` (head output
z), ``a3.h5<q>`` (its query), ``m2`` (MLP output), ``m2.n17`` (one neuron), ``logits``;
per-position nodes add ``@t`` (``a3.h5<q>@7``). In a grouped-query model a key or value
node is one KV head and says so: ``a3.kv1<k>``. Edges are ``a0.h1->a3.h5<k>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor

from circuitgraph.errors import ConfigError, ModelStateError
from circuitgraph.model import ModelInfo

__all__ = [
    "NODE_KINDS",
    "Edge",
    "Node",
    "NodeArray",
    "NodeKind",
    "can_feed",
    "edge_sources",
    "edge_targets",
    "enumerate_nodes",
    "fixed",
    "layers_of",
    "node_array",
]

NodeKind = Literal["input", "head", "q", "k", "v", "mlp", "neuron", "logits"]
#: kinds that ``enumerate_nodes`` screens (``input`` and ``logits`` are graph ends only)
NODE_KINDS: tuple[str, ...] = ("head", "q", "k", "v", "mlp", "neuron")
_ORDER = {"input": 0, "q": 1, "k": 2, "v": 3, "head": 4, "mlp": 5, "neuron": 6, "logits": 7}


@dataclass(frozen=True)
class Node:
    """One component of the model.

    ``index`` is the head (or KV head when ``grouped``), or the neuron; ``position`` is a
    token position for per-position nodes and None for all positions.

    Example:
        >>> Node("q", 3, 5).id
        'a3.h5<q>'
        >>> Node.parse("m2.n17@4")
        Node(kind='neuron', layer=2, index=17, position=4, grouped=False)
    """

    kind: NodeKind
    layer: int = -1
    index: int | None = None
    position: int | None = None
    grouped: bool = False

    @property
    def id(self) -> str:
        k, layer, i = self.kind, self.layer, self.index
        base: str
        if k in ("input", "logits"):
            base = str(k)
        elif k == "head":
            base = f"a{layer}.h{i}"
        elif k in ("q", "k", "v"):
            base = f"a{layer}.{'kv' if self.grouped else 'h'}{i}<{k}>"
        elif k == "mlp":
            base = f"m{layer}"
        else:
            base = f"m{layer}.n{i}"
        return base if self.position is None else f"{base}@{self.position}"

    def __str__(self) -> str:
        return self.id

    @property
    def sort_key(self) -> tuple[int, int, int, int, int]:
        """Topological order: by layer, then input side before output side within a layer."""
        layer = -1 if self.kind == "input" else (10**6 if self.kind == "logits" else self.layer)
        return (
            layer,
            _ORDER[self.kind],
            -1 if self.index is None else self.index,
            -1 if self.position is None else self.position,
            int(self.grouped),
        )

    def at(self, position: int | None) -> Node:
        """The same node restricted to one token position (None: all positions)."""
        return Node(self.kind, self.layer, self.index, position, self.grouped)

    @classmethod
    def parse(cls, text: str) -> Node:
        m = _NODE_RE.fullmatch(text.strip())
        if m is None:
            raise ConfigError(
                f"expected a node id like 'a3.h5', 'a3.h5<q>', 'm2', 'm2.n17', 'input' or "
                f"'logits' but got {text!r}"
            )
        pos = int(m["pos"]) if m["pos"] is not None else None
        if m["end"]:
            return cls(m["end"], position=pos)  # type: ignore[arg-type]
        if m["alayer"] is not None:
            qkv = m["qkv"]
            grouped = m["hk"] == "kv"
            if grouped and qkv not in ("k", "v"):
                raise ConfigError(f"a KV-head id must name <k> or <v>, got {text!r}")
            kind = qkv or "head"
            return cls(kind, int(m["alayer"]), int(m["head"]), pos, grouped)  # type: ignore[arg-type]
        if m["neuron"] is not None:
            return cls("neuron", int(m["mlayer"]), int(m["neuron"]), pos)
        return cls("mlp", int(m["mlayer"]), None, pos)


_NODE_RE = re.compile(
    r"(?:(?P<end>input|logits)"
    r"|a(?P<alayer>\d+)\.(?P<hk>h|kv)(?P<head>\d+)(?:<(?P<qkv>[qkv])>)?"
    r"|m(?P<mlayer>\d+)(?:\.n(?P<neuron>\d+))?)"
    r"(?:@(?P<pos>\d+))?"
)


@dataclass(frozen=True)
class Edge:
    """A connection: ``src``'s output read as ``dst``'s input only.

    Sources are ``input``, heads and MLPs; targets are a head's q/k/v input, an MLP's
    input, or the logits.

    Example:
        >>> Edge.parse("a0.h1->a3.h5<k>").dst.kind
        'k'
    """

    src: Node
    dst: Node

    @property
    def id(self) -> str:
        return f"{self.src.id}->{self.dst.id}"

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, text: str) -> Edge:
        if "->" not in text:
            raise ConfigError(f"expected an edge id like 'a0.h1->a3.h5<k>' but got {text!r}")
        src, dst = text.split("->", 1)
        return cls(Node.parse(src), Node.parse(dst))


def edge_sources(info: ModelInfo) -> list[Node]:
    """Everything that writes to the residual stream: the embedding, heads, MLPs (in order).

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> info = ModelInfo("m", 1, 2, 2, 8, 4, 16, "LN", False, False, False, 10, 8)
        >>> [n.id for n in edge_sources(info)]
        ['input', 'a0.h0', 'a0.h1', 'm0']
    """
    out = [Node("input")]
    for layer in range(info.n_layers):
        out += [Node("head", layer, h) for h in range(info.n_heads)]
        if not info.attn_only:
            out.append(Node("mlp", layer))
    return out


def edge_targets(info: ModelInfo) -> list[Node]:
    """Everything that reads the residual stream: q/k/v inputs of heads, MLP inputs, logits.

    A target ``m2`` is MLP 2's input; key and value targets of a grouped-query model are
    KV heads.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> info = ModelInfo("m", 1, 2, 1, 8, 4, 16, "LN", False, False, False, 10, 8)
        >>> [n.id for n in edge_targets(info)]
        ['a0.h0<q>', 'a0.h1<q>', 'a0.kv0<k>', 'a0.kv0<v>', 'm0', 'logits']
    """
    g = info.grouped_query
    out: list[Node] = []
    for layer in range(info.n_layers):
        out += [Node("q", layer, h) for h in range(info.n_heads)]
        out += [Node("k", layer, h, None, g) for h in range(info.n_kv_heads)]
        out += [Node("v", layer, h, None, g) for h in range(info.n_kv_heads)]
        if not info.attn_only:
            out.append(Node("mlp", layer))
    return [*out, Node("logits")]


def can_feed(src: Node, dst: Node, parallel: bool = False) -> bool:
    """Whether ``src`` writes to the residual stream before ``dst`` reads it.

    In a sequential block the MLP reads the attention's write; with ``parallel`` blocks
    (GPT-NeoX, GPT-J, Phi, Falcon) the attention and the MLP of a layer both read the
    residual stream before the layer, so no head feeds its own layer's MLP.

    Example:
        >>> can_feed(Node("head", 1, 0), Node("mlp", 1)), can_feed(Node("mlp", 1), Node("q", 1, 0))
        (True, False)
        >>> can_feed(Node("head", 1, 0), Node("mlp", 1), parallel=True)
        False
    """
    if dst.kind == "logits" or src.kind == "input":
        return True
    if dst.kind == "mlp" and src.kind == "head" and not parallel:
        return src.layer <= dst.layer
    return src.layer < dst.layer


def enumerate_nodes(
    info: ModelInfo,
    kinds: Iterable[str] = ("head", "mlp"),
    per_position: bool = False,
    seq_len: int | None = None,
    layers: Sequence[int] | None = None,
) -> list[Node]:
    """All nodes of the given kinds, in topological order.

    Args:
        info: the model's :class:`~circuitgraph.model.ModelInfo`.
        kinds: any of ``head``, ``q``, ``k``, ``v``, ``mlp``, ``neuron``.
        per_position: one node per token position (needs ``seq_len``).
        layers: restrict to these layers.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> info = ModelInfo("m", 2, 4, 2, 32, 8, 64, "RMS", True, True, False, 50, 32)
        >>> [n.id for n in enumerate_nodes(info, ["k"], layers=[0])]
        ['a0.kv0<k>', 'a0.kv1<k>']
    """
    kinds = _checked_kinds(info, kinds, per_position, seq_len)
    out: list[Node] = []
    for layer in layers if layers is not None else range(info.n_layers):
        for kind in kinds:
            out.extend(_layer_nodes(info, kind, layer))
    out.sort(key=lambda n: n.sort_key)
    if per_position:
        assert seq_len is not None
        out = [n.at(t) for n in out for t in range(seq_len)]
    return out


def _layer_nodes(info: ModelInfo, kind: str, layer: int) -> list[Node]:
    if kind in ("head", "q"):
        return [Node(kind, layer, h) for h in range(info.n_heads)]  # type: ignore[arg-type]
    if kind in ("k", "v"):
        g = info.grouped_query
        return [Node(kind, layer, h, None, g) for h in range(info.n_kv_heads)]  # type: ignore[arg-type]
    if kind == "mlp":
        return [Node("mlp", layer)]
    return [Node("neuron", layer, i) for i in range(info.d_mlp)]


#: kind codes of :class:`NodeArray`, in topological order within a layer
_KINDS: tuple[str, ...] = ("q", "k", "v", "head", "mlp", "neuron")


class NodeArray(Sequence[Node]):
    """Many nodes held as dense columns; a :class:`Node` is made only when one is asked for.

    Scoring every MLP neuron of a large model means hundreds of thousands of nodes: as
    columns (kind, layer, unit — the head or neuron —, position, grouped) they cost a few tensors, and estimators
    group them into hook sites with tensor operations instead of a Python loop per node.
    It is a read-only sequence of nodes, equal to any sequence holding the same nodes.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> info = ModelInfo("m", 1, 2, 2, 8, 4, 3, "LN", False, False, False, 10, 8)
        >>> a = node_array(info, ["neuron"])
        >>> len(a), a[1].id, a.locate(Node("neuron", 0, 2))
        (3, 'm0.n1', 2)
    """

    def __init__(
        self, kind: Tensor, layer: Tensor, unit: Tensor, position: Tensor, grouped: Tensor
    ) -> None:
        self.kind, self.layer, self.unit = kind, layer, unit
        self.position, self.grouped = position, grouped

    def __len__(self) -> int:
        return int(self.kind.numel())

    @overload
    def __getitem__(self, i: int) -> Node: ...

    @overload
    def __getitem__(self, i: slice) -> NodeArray: ...

    def __getitem__(self, i: int | slice) -> Node | NodeArray:
        if isinstance(i, slice):
            cols = (self.kind, self.layer, self.unit, self.position, self.grouped)
            return NodeArray(*(c[i] for c in cols))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"node {i} of {len(self)}")
        unit, position = int(self.unit[i]), int(self.position[i])
        return Node(
            _KINDS[int(self.kind[i])],  # type: ignore[arg-type]
            int(self.layer[i]),
            None if unit < 0 else unit,
            None if position < 0 else position,
            bool(self.grouped[i]),
        )

    def __iter__(self) -> Iterator[Node]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NodeArray({len(self)} nodes)"

    @property
    def has_positions(self) -> bool:
        """Whether any node is restricted to one token position."""
        return bool((self.position >= 0).any())

    def locate(self, node: Node) -> int:
        """The position of ``node`` in this array (KeyError when absent)."""
        if node.kind not in _KINDS:
            raise KeyError(node)
        hit = (
            (self.kind == _KINDS.index(node.kind))
            & (self.layer == node.layer)
            & (self.unit == (-1 if node.index is None else node.index))
            & (self.position == (-1 if node.position is None else node.position))
            & (self.grouped == node.grouped)
        ).nonzero()
        if not len(hit):
            raise KeyError(node)
        return int(hit[0, 0])

    @classmethod
    def of(cls, nodes: Sequence[Node]) -> NodeArray:
        """The columns of a sequence of nodes (screened kinds only)."""
        if isinstance(nodes, NodeArray):
            return nodes

        def col(values: list[Any], dtype: torch.dtype = torch.long) -> Tensor:
            return torch.tensor(values, dtype=dtype)

        return cls(
            col([_KINDS.index(n.kind) for n in nodes]),
            col([n.layer for n in nodes]),
            col([-1 if n.index is None else n.index for n in nodes]),
            col([-1 if n.position is None else n.position for n in nodes]),
            col([n.grouped for n in nodes], torch.bool),
        )


def node_array(
    info: ModelInfo,
    kinds: Iterable[str] = ("head", "mlp"),
    per_position: bool = False,
    seq_len: int | None = None,
    layers: Sequence[int] | None = None,
) -> NodeArray:
    """:func:`enumerate_nodes` as a :class:`NodeArray`: the same nodes in the same order,
    made without a Python object per node.

    Example:
        >>> from circuitgraph.model import ModelInfo
        >>> info = ModelInfo("m", 2, 4, 2, 32, 8, 64, "RMS", True, True, False, 50, 32)
        >>> list(node_array(info, ["k", "mlp"])) == enumerate_nodes(info, ["k", "mlp"])
        True
    """
    chosen = _checked_kinds(info, kinds, per_position, seq_len)
    width = {"head": info.n_heads, "q": info.n_heads, "k": info.n_kv_heads,
             "v": info.n_kv_heads, "mlp": 1, "neuron": info.d_mlp}  # fmt: skip
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for layer in layers if layers is not None else range(info.n_layers):
        for kind in sorted(set(chosen), key=_KINDS.index):
            n = width[kind]
            grouped = kind in ("k", "v") and info.grouped_query
            parts.append((
                torch.full((n,), _KINDS.index(kind)),
                torch.full((n,), layer),
                torch.full((n,), -1) if kind == "mlp" else torch.arange(n),
                torch.full((n,), grouped, dtype=torch.bool),
            ))  # fmt: skip
    if not parts:
        none = torch.zeros(0, dtype=torch.long)
        return NodeArray(none, none, none, none, none.bool())
    cols = [torch.cat(c) for c in zip(*parts, strict=True)]
    position = torch.full_like(cols[0], -1)
    if per_position:
        assert seq_len is not None
        position = torch.arange(seq_len).repeat(len(position))
        cols = [c.repeat_interleave(seq_len) for c in cols]
    return NodeArray(cols[0], cols[1], cols[2], position, cols[3])


def _checked_kinds(
    info: ModelInfo, kinds: Iterable[str], per_position: bool, seq_len: int | None
) -> list[str]:
    kinds = list(kinds)
    unknown = sorted(set(kinds) - set(NODE_KINDS))
    if unknown:
        raise ConfigError(
            f"expected node kinds among {list(NODE_KINDS)} but got {unknown}; pick from those"
        )
    if per_position and seq_len is None:
        raise ConfigError("per-position nodes need the sequence length (seq_len)")
    if info.attn_only and ({"mlp", "neuron"} & set(kinds)):
        kinds = [k for k in kinds if k not in ("mlp", "neuron")]
    if info.moe and "neuron" in kinds:
        raise ModelStateError(
            "neuron nodes need one MLP per layer but this model routes each token to experts "
            "(mixture of experts); score whole MLPs (kind 'mlp') instead, heads, q/k/v, MLP "
            "nodes and every edge method still work"
        )
    return kinds


def fixed(nodes: Sequence[Node]) -> Sequence[Node]:
    """An immutable sequence of the nodes: a :class:`NodeArray` as it is, else a tuple."""
    return nodes if isinstance(nodes, NodeArray) else tuple(nodes)


def layers_of(nodes: Sequence[Node]) -> Tensor:
    """Each node's layer as a tensor (no Python object per node for a :class:`NodeArray`).

    Example:
        >>> layers_of([Node("head", 1, 0), Node("mlp", 3)]).tolist()
        [1, 3]
    """
    if isinstance(nodes, NodeArray):
        return nodes.layer
    return torch.tensor([n.layer for n in nodes], dtype=torch.long)
