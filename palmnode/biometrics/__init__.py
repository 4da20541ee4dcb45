"""The biometric engine: kernels, features, matching (see native/ for the C side)."""
