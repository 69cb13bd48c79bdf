"""The bundled OTA backend: update, device and campaign management over gRPC.

``backend_stub.api`` holds the ``.proto`` files and their generated modules:
the only part other packages (the gateway) may import. The rest:
:mod:`backend_stub.server` starts it, :mod:`backend_stub.service` and
:mod:`backend_stub.engine` hold the rules, :mod:`backend_stub.store` the
persistence, :mod:`backend_stub.pki` the development certificates. This
module imports nothing, so importing the API stays light.
"""
