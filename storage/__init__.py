"""Job inputs in, results out: IPFS through Kubo, HTTP downloads, and a local store without Kubo.

Layering (imports point down only):

    registry   source → InputSource; prepare_inputs() stages a job's inputs as executor Mounts
    kubo       Kubo RPC client (the only code talking to Kubo), KuboInput, KuboPublisher
    local      LocalPublisher / LocalInput: results under their CID in the node's data dir
    http       HttpInput: URLs streamed to disk under a size limit
    tarstream  result tar streams: write, extract safely, verify against a CID (async, on the node)
    tarsafe    the one tar reader (sync, push-driven), shared by tarstream and the SDK's ``shoal get``
    unixfs     CIDs exactly as `ipfs add` computes them, in pure Python
    base, errors  the Protocols and the exception tree

Other packages import storage names from here only.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.base import InputSource, Publisher, parse_ipfs_source
    from storage.errors import (
        Corrupted,
        InvalidSource,
        NotFound,
        NotFoundInTime,
        StorageError,
        TooLarge,
        Unavailable,
        Unsafe,
    )
    from storage.http import HttpInput
    from storage.kubo import DEFAULT_API, DEFAULT_FIND_TIMEOUT, KuboClient, KuboInput, KuboPublisher, PathStat
    from storage.local import LocalInput, LocalPublisher
    from storage.registry import InputRegistry
    from storage.tarstream import extract_tar, extract_verified, tar_path, verify_path
    from storage.unixfs import Cid, cid_of_bytes, cid_of_path, compute_cid, is_cid, parse_cid

_WHERE = {
    "Cid": "storage.unixfs",
    "Corrupted": "storage.errors",
    "DEFAULT_API": "storage.kubo",
    "DEFAULT_FIND_TIMEOUT": "storage.kubo",
    "HttpInput": "storage.http",
    "InputRegistry": "storage.registry",
    "InputSource": "storage.base",
    "InvalidSource": "storage.errors",
    "KuboClient": "storage.kubo",
    "KuboInput": "storage.kubo",
    "KuboPublisher": "storage.kubo",
    "LocalInput": "storage.local",
    "LocalPublisher": "storage.local",
    "NotFound": "storage.errors",
    "NotFoundInTime": "storage.errors",
    "PathStat": "storage.kubo",
    "Publisher": "storage.base",
    "StorageError": "storage.errors",
    "TooLarge": "storage.errors",
    "Unavailable": "storage.errors",
    "Unsafe": "storage.errors",
    "cid_of_bytes": "storage.unixfs",
    "cid_of_path": "storage.unixfs",
    "compute_cid": "storage.unixfs",
    "extract_tar": "storage.tarstream",
    "extract_verified": "storage.tarstream",
    "is_cid": "storage.unixfs",
    "parse_cid": "storage.unixfs",
    "parse_ipfs_source": "storage.base",
    "tar_path": "storage.tarstream",
    "verify_path": "storage.tarstream",
}


def __getattr__(name: str) -> Any:
    """Names load on first use: the SDK imports ``storage.unixfs`` without trio or httpx."""
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'storage' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_API",
    "DEFAULT_FIND_TIMEOUT",
    "Cid",
    "Corrupted",
    "HttpInput",
    "InputRegistry",
    "InputSource",
    "InvalidSource",
    "KuboClient",
    "KuboInput",
    "KuboPublisher",
    "LocalInput",
    "LocalPublisher",
    "NotFound",
    "NotFoundInTime",
    "PathStat",
    "Publisher",
    "StorageError",
    "TooLarge",
    "Unavailable",
    "Unsafe",
    "cid_of_bytes",
    "cid_of_path",
    "compute_cid",
    "extract_tar",
    "extract_verified",
    "is_cid",
    "parse_cid",
    "parse_ipfs_source",
    "tar_path",
    "verify_path",
]
