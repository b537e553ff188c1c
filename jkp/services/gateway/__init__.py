"""The one place jkp talks to Enterprise Gateway: GatewayClient (client.py) over REST and
kernel websockets (channel.py), and what EG answers (answers.py)."""

from jkp.services.gateway.answers import Forwarded, GatewayError, KernelReplyError, ShellReply
from jkp.services.gateway.channel import MAX_WEBSOCKET_MESSAGE_BYTES, ack_quickly
from jkp.services.gateway.client import GatewayClient

__all__ = [
    "MAX_WEBSOCKET_MESSAGE_BYTES",
    "Forwarded",
    "GatewayClient",
    "GatewayError",
    "KernelReplyError",
    "ShellReply",
    "ack_quickly",
]
