"""The virtual gate: every device emulator on its own pty, the camera on loopback, scenarios."""
