"""Benewake TFmini-S / TFmini Plus single-point LiDAR over UART: the gate's hand-presence sensor."""
