"""introspect: find the hidden attributes an image network pays attention to, at scale."""

import os

# OpenCV reads its decoding limit once, when cv2 loads: set it before any module imports cv2, so
# a format whose header introspect does not parse still refuses decompression bombs (engine/images.py).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "50000000")

__version__ = "0.1.0"
