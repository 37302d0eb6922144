"""The network layer: the one UDP socket, links and sessions, NAT traversal, LAN discovery.
The only owner of link state."""
