"""Old home of the peer-checkpoint importers; everything is in :mod:`convnets.weights` now (kept for old imports)."""

from convnets.weights import (  # noqa: F401
    LAYOUTS,
    LayoutError,
    PeerLayout,
    cached_download,
    convert_state_dict,
    detect_layout,
    load_peer_weights,
    strip_wrapper_prefixes,
)
