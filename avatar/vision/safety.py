"""Content safety: the probability that an output is sexually explicit, from Yahoo's open_nsfw (ResNet-50, ONNX).

The graph (`open-nsfw.onnx`) takes `input:0` as NHWC float32 (N, 224, 224, 3), transposes to NCHW and goes straight
into the first convolution, so normalisation is ours to do: the Caffe reference pipeline, i.e. resize to 256x256
(bilinear), centre crop 224, BGR channel order, subtract the ImageNet BGR mean (104, 117, 123), no scaling. The output
`outputs` is a softmax over (sfw, nsfw); we return the nsfw column. The reference also round-trips the crop through
JPEG (quality 75) before scoring; we keep that, because thresholds published for open_nsfw were set on those scores and
skipping it moves portrait scores by ~0.02.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from avatar.store.models import resolve

MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
_RESIZE, _CROP = 256, 224


@dataclass
class SafetyClassifier:
    """An onnxruntime session over open_nsfw; ~20-40 ms per image on one CPU core."""

    session: object
    input_name: str

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int = 1) -> SafetyClassifier:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path or resolve("safety_classifier")), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        return cls(session=session, input_name=session.get_inputs()[0].name)

    def nsfw_probability(self, rgb: np.ndarray) -> float:
        """P(nsfw) in 0..1 for an (H, W, 3) uint8 RGB image."""
        batch = preprocess(rgb)[None]
        (scores,) = self.session.run(None, {self.input_name: batch})
        return float(scores[0, 1])


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """(224, 224, 3) float32 BGR, mean-subtracted: open_nsfw's Caffe input convention."""
    img = Image.fromarray(np.ascontiguousarray(rgb[:, :, :3]).astype(np.uint8), "RGB")
    img = img.resize((_RESIZE, _RESIZE), resample=Image.Resampling.BILINEAR)
    off = (_RESIZE - _CROP) // 2
    buf = io.BytesIO()
    img.crop((off, off, off + _CROP, off + _CROP)).save(buf, format="JPEG")
    arr = np.asarray(Image.open(buf), dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1] - MEAN_BGR, dtype=np.float32)
