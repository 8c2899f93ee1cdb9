"""xnatfs: an XNAT imaging archive mounted as a file system."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Mounting needs pyfuse3 and trio; plain `import xnatfs.client` should not load them.
    if name in ("mount", "Mount", "MountError"):
        from xnatfs import api

        return getattr(api, name)
    raise AttributeError(f"module 'xnatfs' has no attribute {name!r}")
