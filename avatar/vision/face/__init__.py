"""Face stage: detection, 468 landmarks, head pose and alignment to the canonical template."""

from avatar.vision.face.align import TEMPLATE_LANDMARKS, align_face, template_points
from avatar.vision.face.analyzer import FaceAnalyzer

__all__ = ["FaceAnalyzer", "TEMPLATE_LANDMARKS", "align_face", "template_points"]
