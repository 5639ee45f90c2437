"""
The twistd plugin: C{twistd filerelay}. Kept to one line so that C{twistd
--help} never imports the relay itself.
"""

from twisted.application.service import ServiceMaker

filerelay = ServiceMaker(
    "filerelay",
    "twisted_relay.service",
    "Relay files between senders and receivers that share a short code.",
    "filerelay",
)
