"""palmnode: the software inside a contactless palm-identity gate."""
import os

__version__ = "0.1.0"

#: the largest image (pixels) the engine takes (biometrics.types.check_frame refuses larger ones)
MAX_FRAME_PIXELS = 4096 * 4096

# OpenCV's decoders refuse an image whose header declares more pixels than this before allocating
# it, but read the limit once, when cv2 is first imported (default 2^30: a 30000x30000 PNG of a few
# KB was decoded into 900 MB, for 14 s, before the engine refused it). Every palmnode module that
# uses cv2 imports this package first; an operator's own setting wins.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_FRAME_PIXELS))
