"""Is a Hugging Face hub id usable here without waiting on the network? Torch-free.

transformers/diffusers retry an unreachable hub for a minute before failing; these checks
answer in seconds: a hub id is usable if it is in the HF cache, or if the hub can be reached
and HF_HUB_OFFLINE is not set.
"""
from __future__ import annotations

import os
import socket
from typing import Optional
from urllib.parse import urlparse


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_file(repo_id: str, filename: str) -> Optional[str]:
    """Path of ``filename`` of ``repo_id`` in the local HF cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's host, ``timeout`` seconds at most."""
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False
