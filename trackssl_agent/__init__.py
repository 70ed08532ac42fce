"""trackssl-agent: collects the TLS certificates of private-network servers for TrackSSL."""

__version__ = "0.1.0"
