"""Errors every device driver raises, so a supervisor can treat all devices alike."""


class DeviceError(Exception):
    """Something is wrong with a device; the message names the device and the problem."""


class DeviceLost(DeviceError):
    """The port vanished (unplugged, EIO, hung up): close it and reopen it later."""


class PortUnavailable(DeviceLost):
    """The port could not be opened (missing path, busy, no permission)."""


class DeviceTimeout(DeviceError):
    """The device did not answer in time; the port may still be there."""


class ProtocolError(DeviceError):
    """The device answered with something the protocol does not allow."""
