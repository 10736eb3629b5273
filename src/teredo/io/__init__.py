"""The I/O adapters around the core: UDP sockets, the TUN device, netlink, the event loop."""
