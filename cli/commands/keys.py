"""``shoal key show`` (your client key) and ``shoal network-key new`` (a private network's key)."""

from __future__ import annotations

import sys

from cli.extras import require_node


def key_show() -> None:
    """Print your public key on one line (what a node's --authorized-keys file lists; created on first use)."""
    from shoal._auth import ClientKey

    print(ClientKey.load_or_create().public_key_b64)


def network_key_new() -> None:
    """Print a new random network key: shoal network-key new > FILE.

    32 random bytes in libp2p's swarm.key format. Give every node of the network the same file
    (shoal serve --network-key FILE) and keep it secret.
    """
    require_node("network-key new")
    from node.net.admission import new_network_key

    sys.stdout.write(new_network_key())
