"""hidsd: a host-intrusion-detection agent whose control plane no agent escapes."""

__version__ = "0.1.0"
