"""palmnode: the software inside a contactless palm-identity gate."""

__version__ = "0.1.0"
