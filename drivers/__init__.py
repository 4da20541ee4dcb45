"""The hardware layer: one package per device, each a sans-IO codec, a trio driver and a pty emulator.

Nothing here imports ``palmnode``: drivers know bytes and devices, nothing of palms.
"""
