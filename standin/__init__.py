"""An in-memory stand-in for the OpenAI API, for tests, demos and benchmarks.

It speaks enough of the Assistants v2 and Responses + Conversations surfaces for
the official SDK, moves runs and responses through their lifecycle on a
background clock, and injects faults on request.
"""

from standin.config import StandInConfig
from standin.server import StandIn, serve

__all__ = ["StandIn", "StandInConfig", "serve"]
