"""emkt: teacher-student knowledge transfer for EM mitochondria segmentation."""

__version__ = "0.1.0"
