"""
twisted_relay: move one file between two machines that can both reach a relay.

The sender registers with the relay and prints a short code; the receiver
claims it; the relay pairs the two connections and forwards bytes with
backpressure, never storing them.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
