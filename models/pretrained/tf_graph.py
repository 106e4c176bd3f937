"""Reading a TensorFlow frozen GraphDef (``.pb``) with plain protobuf, without TensorFlow.

TensorFlow is a 600 MB dependency that does not belong in avatarcam's environment; to take
weights out of a frozen graph we only need the node list and the constant tensors. The
message types below declare the subset of TensorFlow's public schema (``graph.proto``,
``node_def.proto``, ``attr_value.proto``, ``tensor.proto``, ``tensor_shape.proto``) that holds
them, with TensorFlow's field numbers, in a private descriptor pool so they never clash with a
real TensorFlow imported in the same process. Unknown fields are skipped by protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)

# TensorFlow DataType enum values we can decode, and their numpy types.
_DTYPES: dict[int, type[np.generic]] = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}
_PACKAGE = "avatarcam_tf_subset"


@dataclass(frozen=True)
class Node:
    """One NodeDef.

    Attributes:
        name: the node's unique name.
        op: the operation type (``Conv2D``, ``Const``, ...).
        inputs: input node names; ``:0`` suffixes stripped, ``^`` control inputs kept as is.
        attrs: decoded attributes: bytes as str, ints, floats, bools, int lists, or for a
            ``Const`` node's ``value`` a numpy array.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> npt.NDArray[Any]:
        """A ``Const`` node's tensor."""
        assert self.op == "Const", (self.name, self.op)
        result: npt.NDArray[Any] = self.attrs["value"]
        return result


def _schema() -> Any:
    """The GraphDef message class, built from a descriptor (no generated code)."""
    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    fd = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str | None], oneof: bool = False) -> None:
        """Declare a message; with `oneof`, all its fields form the oneof ``value``."""
        m = fd.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name="value")
        for fname, number, ftype, label, type_name in fields:
            entry = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name is not None:
                entry.type_name = f".{_PACKAGE}.{type_name}"
            if oneof:
                entry.oneof_index = 0

    i32, i64, flt, dbl = f.TYPE_INT32, f.TYPE_INT64, f.TYPE_FLOAT, f.TYPE_DOUBLE
    boo, byt, msg, txt = f.TYPE_BOOL, f.TYPE_BYTES, f.TYPE_MESSAGE, f.TYPE_STRING
    # Enums (DataType) are declared as int32: identical on the wire, and no enum table needed.
    message("Dim", ("size", 1, i64, opt, None), ("name", 2, txt, opt, None))
    message("Shape", ("dim", 2, msg, rep, "Dim"), ("unknown_rank", 3, boo, opt, None))
    message(
        "Tensor",
        ("dtype", 1, i32, opt, None),
        ("tensor_shape", 2, msg, opt, "Shape"),
        ("tensor_content", 4, byt, opt, None),
        ("float_val", 5, flt, rep, None),
        ("double_val", 6, dbl, rep, None),
        ("int_val", 7, i32, rep, None),
        ("int64_val", 10, i64, rep, None),
    )
    message(
        "ListValue",
        ("s", 2, byt, rep, None),
        ("i", 3, i64, rep, None),
        ("f", 4, flt, rep, None),
        ("b", 5, boo, rep, None),
        ("type", 6, i32, rep, None),
    )
    message(
        "AttrValue",
        ("list", 1, msg, opt, "ListValue"),
        ("s", 2, byt, opt, None),
        ("i", 3, i64, opt, None),
        ("f", 4, flt, opt, None),
        ("b", 5, boo, opt, None),
        ("type", 6, i32, opt, None),
        ("shape", 7, msg, opt, "Shape"),
        ("tensor", 8, msg, opt, "Tensor"),
        oneof=True,
    )
    # map<string, AttrValue> is, on the wire, a repeated (key = 1, value = 2) message.
    message("AttrEntry", ("key", 1, txt, opt, None), ("value", 2, msg, opt, "AttrValue"))
    message(
        "NodeDef",
        ("name", 1, txt, opt, None),
        ("op", 2, txt, opt, None),
        ("input", 3, txt, rep, None),
        ("device", 4, txt, opt, None),
        ("attr", 5, msg, rep, "AttrEntry"),
    )
    message("GraphDef", ("node", 1, msg, rep, "NodeDef"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.GraphDef"))


def _tensor(t: Any) -> npt.NDArray[Any]:
    """Decode a TensorProto into a numpy array (copy, native byte order)."""
    if t.dtype not in _DTYPES:
        raise ValueError(f"unsupported TensorFlow dtype enum {t.dtype}")
    dtype = np.dtype(_DTYPES[t.dtype]).newbyteorder("<")
    shape = tuple(int(d.size) for d in t.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if t.tensor_content:
        flat = np.frombuffer(t.tensor_content, dtype=dtype)
    else:
        # Small constants are stored as a value list; one value means "fill the shape".
        values = {1: t.float_val, 2: t.double_val, 3: t.int_val, 9: t.int64_val}[t.dtype]
        flat = np.asarray(list(values), dtype=dtype)
        if flat.size == 1 and count != 1:
            flat = np.full(count, flat[0], dtype=dtype)
    if flat.size != count:
        raise ValueError(f"tensor holds {flat.size} values, shape {shape} needs {count}")
    return flat.reshape(shape).astype(dtype.newbyteorder("="))


def _attr(a: Any) -> Any:
    """Decode an AttrValue: its one set field, in a plain Python / numpy form."""
    kind = a.WhichOneof("value")
    if kind == "tensor":
        return _tensor(a.tensor)
    if kind == "list":
        lst = a.list
        return list(lst.i) or list(lst.f) or [s.decode() for s in lst.s] or list(lst.b)
    if kind == "shape":
        return [int(d.size) for d in a.shape.dim]
    if kind == "s":
        return a.s.decode()
    return None if kind is None else getattr(a, kind)


def read_graph(path: Path) -> dict[str, Node]:
    """Parse the frozen graph at `path` into its nodes, keyed by name, in file order."""
    graph = _schema()()
    graph.ParseFromString(path.read_bytes())
    nodes: dict[str, Node] = {}
    for n in graph.node:
        inputs = tuple(i.removesuffix(":0") for i in n.input)
        nodes[n.name] = Node(n.name, n.op, inputs, {e.key: _attr(e.value) for e in n.attr})
    return nodes


class GraphError(ValueError):
    """The graph is not the network the converter expects (names, wiring, shapes or attrs)."""


class Graph:
    """A frozen graph's nodes with the queries a converter needs, and a record of which
    constants were read, so a converter can prove it used every weight the graph holds."""

    def __init__(self, path: Path) -> None:
        self.nodes = read_graph(path)
        self._consumers: dict[str, list[Node]] = {}
        for node in self.nodes.values():
            for name in node.inputs:
                self._consumers.setdefault(name, []).append(node)
        self._read: set[str] = set()

    def node(self, name: str, op: str | None = None) -> Node:
        """The node called `name`, checked to be an `op` when given."""
        found = self.nodes.get(name)
        if found is None:
            raise GraphError(f"graph has no node {name!r}")
        if op is not None and found.op != op:
            raise GraphError(f"{name}: expected op {op}, graph has {found.op}")
        return found

    def consumer(self, name: str, op: str) -> Node | None:
        """The one node of type `op` that reads `name`'s output, or None."""
        found = [n for n in self._consumers.get(name, []) if n.op == op]
        if len(found) > 1:
            raise GraphError(f"{name} feeds {len(found)} {op} nodes; expected at most one")
        return found[0] if found else None

    def const(self, name: str, shape: tuple[int, ...] | None = None) -> npt.NDArray[Any]:
        """A constant's value (recorded as read), checked to have `shape` when given."""
        value = self.node(name, "Const").value
        if shape is not None and value.shape != shape:
            raise GraphError(f"{name}: expected shape {shape}, graph has {value.shape}")
        self._read.add(name)
        return value

    def expect(self, name: str, what: str, actual: object, expected: object) -> None:
        """Raise GraphError unless `actual == expected`."""
        if actual != expected:
            raise GraphError(f"{name}: {what} is {actual!r}, expected {expected!r}")

    def unread_weights(self) -> list[str]:
        """Float constants of rank >= 1 no one has read: weights a converter would drop."""
        return [
            n.name
            for n in self.nodes.values()
            if n.op == "Const" and n.name not in self._read and n.value.ndim >= 1 and n.value.dtype.kind == "f"
        ]
