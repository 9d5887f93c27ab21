"""Job inputs in, results out: IPFS through Kubo, HTTP downloads, and a local store without Kubo.

Layering (imports point down only):

    registry   source → InputSource; prepare_inputs() stages a job's inputs as executor Mounts
    kubo       Kubo RPC client (the only code talking to Kubo), KuboInput, KuboPublisher
    local      LocalPublisher / LocalInput: results under their CID in the node's data dir
    http       HttpInput: URLs streamed to disk under a size limit
    tarstream  result tar streams: write, extract safely, verify against a CID
    unixfs     CIDs exactly as `ipfs add` computes them, in pure Python
    base, errors  the Protocols and the exception tree

Other packages import storage names from here only.
"""

from storage.base import InputSource, Publisher, parse_ipfs_source
from storage.errors import Corrupted, InvalidSource, NotFound, StorageError, TooLarge, Unavailable
from storage.http import HttpInput
from storage.kubo import DEFAULT_API, DEFAULT_FIND_TIMEOUT, KuboClient, KuboInput, KuboPublisher, PathStat
from storage.local import LocalInput, LocalPublisher
from storage.registry import InputRegistry
from storage.tarstream import extract_tar, extract_verified, tar_path, verify_path
from storage.unixfs import Cid, cid_of_bytes, cid_of_path, compute_cid, is_cid, parse_cid

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
    "PathStat",
    "Publisher",
    "StorageError",
    "TooLarge",
    "Unavailable",
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
