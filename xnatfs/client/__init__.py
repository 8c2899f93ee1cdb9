"""The XNAT client of xnatfs, also usable on its own.

It offers datman's ``datman.xnat`` calls (``xnat``, a facade over ``XnatConnection``,
``get_connection``, ``get_port_str``, ``XNATSubject``, ``XNATExperiment``,
``XNATScan``, ``XnatException``) and the calls the file system is built on.
See docs/PYTHON_API.md for an example.
"""

from xnatfs.client.config import ClientConfig, get_connection, get_port_str
from xnatfs.client.connection import XnatConnection
from xnatfs.client.credentials import AliasToken, Credentials, resolve_credentials, store_alias_token
from xnatfs.client.datman_api import DatmanConnection, DatmanSession, xnat
from xnatfs.client.objects import XNATExperiment, XNATScan, XNATSubject
from xnatfs.errors import (
    XnatAuthError,
    XnatConflict,
    XnatError,
    XnatException,
    XnatInvalidLabel,
    XnatNotFound,
    XnatPermissionError,
    XnatServerError,
    XnatUnsupported,
)

__all__ = [
    "AliasToken",
    "ClientConfig",
    "Credentials",
    "DatmanConnection",
    "DatmanSession",
    "XNATExperiment",
    "XNATScan",
    "XNATSubject",
    "XnatAuthError",
    "XnatConflict",
    "XnatConnection",
    "XnatError",
    "XnatException",
    "XnatInvalidLabel",
    "XnatNotFound",
    "XnatPermissionError",
    "XnatServerError",
    "XnatUnsupported",
    "get_connection",
    "get_port_str",
    "resolve_credentials",
    "store_alias_token",
    "xnat",
]
