"""The camera: OpenCV ``VideoCapture`` (device index, V4L2 path or MJPEG stream URL) for trio,
and an MJPEG-over-HTTP camera emulator on loopback. See docs/protocols/camera.md."""
from drivers.camera.driver import Camera, CameraStats, Frame, PropertyResult
from drivers.camera.emulator import CameraEmulator
from drivers.camera.scene import DARK, FULL_IR, DiscScene, Lighting

__all__ = ["Camera", "CameraStats", "Frame", "PropertyResult", "CameraEmulator", "DiscScene",
           "Lighting", "DARK", "FULL_IR"]
