"""xnatfs: an XNAT imaging archive mounted as a file system."""

__version__ = "0.1.0"
