"""Caches between the client and the file system: listings (in memory, with a
TTL), file contents (on disk, size-bounded, shared between processes) and the
spool that keeps written files until XNAT has them."""

from xnatfs.cache.content import CachedFile, CacheInfo, CacheKey, ContentCache, PendingFetch
from xnatfs.cache.listing import ListingCache
from xnatfs.cache.spool import SpoolEntry, UploadSpool, UploadTarget
from xnatfs.cache.uploader import PushReport, Uploader

__all__ = [
    "CacheInfo",
    "CacheKey",
    "CachedFile",
    "ContentCache",
    "ListingCache",
    "PendingFetch",
    "PushReport",
    "SpoolEntry",
    "UploadSpool",
    "UploadTarget",
    "Uploader",
]
