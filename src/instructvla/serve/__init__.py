"""Serving over openpi's websocket protocol: wire format (`protocol`), server (`server`), robot-side client (`client`).

Nothing here imports torch; the model is loaded only when a server or chat session starts.
"""

from instructvla.serve.client import ChunkBroker, EnsembledPolicy, ServerError, WebsocketPolicyClient
from instructvla.serve.protocol import ProtocolError, RequestSpec, pack, unpack, validate_request
from instructvla.serve.server import PolicyServer, ServeConfig, ServerThread

__all__ = [
    "ChunkBroker",
    "EnsembledPolicy",
    "PolicyServer",
    "ProtocolError",
    "RequestSpec",
    "ServeConfig",
    "ServerError",
    "ServerThread",
    "WebsocketPolicyClient",
    "pack",
    "unpack",
    "validate_request",
]
