"""The bundled OTA backend (update, device and campaign management over gRPC).

Not built yet: this package reserves its place in the layout.
"""
