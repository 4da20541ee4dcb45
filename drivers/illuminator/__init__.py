"""The LED driver board: StandardFirmata (Firmata 2.5) on an Arduino Uno-class board, one PWM
channel per light, an NTC thermistor on an analog pin, and palmnode's dead-man extension.

``codec`` (sans-IO Firmata), ``driver`` (:class:`Illuminator`, trio), ``emulator``
(:class:`IlluminatorEmulator`, pty), ``thermistor`` (ADC <-> degC). Protocol:
docs/protocols/illuminator.md.
"""
from drivers.illuminator.driver import (
    BoardNotice,
    Cooled,
    DeadmanTripped,
    Illuminator,
    IlluminatorStats,
    OverTemperature,
    OverTemperatureLockout,
    PinCapabilityError,
)
from drivers.illuminator.emulator import IlluminatorEmulator
from drivers.illuminator.thermistor import Thermistor

__all__ = [
    "BoardNotice", "Cooled", "DeadmanTripped", "Illuminator", "IlluminatorEmulator",
    "IlluminatorStats", "OverTemperature", "OverTemperatureLockout", "PinCapabilityError",
    "Thermistor",
]
