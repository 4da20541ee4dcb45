"""The store-controller link (docs/protocols/controller.md): msgpack frames over mutual TLS.

``codec`` (sans-IO framing), ``messages`` (typed messages), ``wire`` (a person on the wire),
``certs`` (development PKI, ``palmnode certs``), ``tls`` (SSL contexts), ``channel`` (one
connection), ``client`` (the node side: dial, reconnect, outbox pump).
"""
