"""The gate's flows as explicit state machines (docs/flows.md).

- ``presence``: presence from the proximity stream (window, dwell, stillness, hysteresis) and
  placement advice;
- ``capture``: the lights sequenced with the camera, ROI/quality/features off the trio loop;
- ``identify``: hand present → captures → 1:N with early exit → decision → the mode's outcome;
- ``enrol``: card → palms from agreeing captures → duplicate check → persisted;
- ``people``: the only way people change (vault and gallery together, outbox events);
- ``modes``: entry / payment / loyalty; ``events``: what the flows publish on the bus.
"""
