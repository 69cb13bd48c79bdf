"""The backend's gRPC API: ``.proto`` files and the code generated from them.

Generated modules (``*_pb2.py``, ``*_pb2_grpc.py``, ``*_pb2.pyi``) are committed
and must not be edited; regenerate them after changing a ``.proto`` file with::

    python -m backend_stub.api.generate

A test fails when the committed modules differ from what the ``.proto`` files
generate. Only the API edge (services, clients) imports these modules; the rest
of the code works on plain dataclasses.
"""
