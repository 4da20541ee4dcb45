"""The LED board's NTC thermistor divider: ADC counts <-> degrees Celsius (beta model).

Circuit (docs/protocols/illuminator.md "Thermistor"): Vcc -- R_fixed -- ADC node -- NTC -- GND,
read by the board's 10-bit ADC against Vcc, so ``adc = 1023 * R_ntc / (R_fixed + R_ntc)``:
a hotter board reads lower. Shared by the emulator (temperature -> counts) and the driver.
"""
from __future__ import annotations

import math

import attrs

KELVIN = 273.15


@attrs.frozen
class Thermistor:
    """An NTC (``r25`` ohms at 25 degC, ``beta`` K) under a fixed resistor on a ``adc_max`` ADC."""

    r25: float = 10_000.0      # a common 10 kOhm NTC (e.g. an NTCLE100E3103, B25/85 = 3977 K)
    beta: float = 3950.0
    r_fixed: float = 10_000.0  # divider resistor, so 25 degC reads mid-scale (~511)
    adc_max: int = 1023        # 10-bit ADC (StandardFirmata's analog resolution on an Uno)

    def resistance(self, celsius: float) -> float:
        t = celsius + KELVIN
        return self.r25 * math.exp(self.beta * (1.0 / t - 1.0 / (25.0 + KELVIN)))

    def adc(self, celsius: float) -> int:
        """The ADC reading at ``celsius`` (clamped to 0..adc_max)."""
        r = self.resistance(celsius)
        return max(0, min(self.adc_max, round(self.adc_max * r / (self.r_fixed + r))))

    def celsius(self, adc: int) -> float:
        """Temperature for an ADC reading; the rails (open/short circuit) map to -inf / +inf."""
        if adc <= 0:
            return math.inf      # NTC shorted: treat as hottest, so safety logic turns lights off
        if adc >= self.adc_max:
            return -math.inf     # NTC open / disconnected
        r = self.r_fixed * adc / (self.adc_max - adc)
        return 1.0 / (1.0 / (25.0 + KELVIN) + math.log(r / self.r25) / self.beta) - KELVIN
