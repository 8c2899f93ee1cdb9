"""Extended attributes: the XNAT identity of each entry (``user.xnat.*``).

Each kind of node says what its attributes are
(:meth:`~xnatfs.fs.nodes.Node.xattr_values`); here they are named and
encoded for the kernel.
"""

from __future__ import annotations

from xnatfs.fs.inodes import InodeEntry
from xnatfs.fs.nodes import Node

PREFIX = "user.xnat."
PREFIX_BYTES = PREFIX.encode()
# The only namespace the mount has attributes in. Names in any other
# (security.*, system.* ACLs, trusted.*) are unsupported, not merely absent.
NAMESPACE_BYTES = b"user."


def xattrs_for(node: Node) -> dict[str, str]:
    """Attribute name → value for ``node``; empty values are left out (ENODATA)."""
    return {PREFIX + name: value for name, value in node.xattr_values().items() if value}


def encoded_xattrs(entry: InodeEntry) -> dict[bytes, bytes]:
    """:func:`xattrs_for` of the entry's node as the kernel wants them (UTF-8).

    Worked out once per node snapshot; a local file's upload state changes
    under the same node (it is ``volatile``), so its attributes are worked
    out on every call.
    """
    node = entry.node
    if node.volatile:
        return _encoded(node)
    if entry.xattrs_of is not node or entry.xattrs is None:
        entry.xattrs = _encoded(node)
        entry.xattrs_of = node
    return entry.xattrs


def _encoded(node: Node) -> dict[bytes, bytes]:
    return {name.encode("utf-8"): value.encode("utf-8") for name, value in xattrs_for(node).items()}
