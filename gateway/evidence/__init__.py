"""Evidence: per-interval Merkle roots over a grid's signed readings, and inclusion proofs.

``merkle`` is the pure RFC 6962 tree (a third party needs only it); ``roots`` keeps
roots per (grid, interval) with versions and makes proofs. See docs/evidence.md.
"""

from __future__ import annotations

from .merkle import EMPTY_ROOT, inclusion_path, leaf_hash, node_hash, root_of, verify_inclusion
from .roots import (PROOF_FORMAT, EvidenceError, EvidenceStore, Proof, ProofFormatError, Root, load_proof,
                    verify)

__all__ = [
    "EMPTY_ROOT", "PROOF_FORMAT", "EvidenceError", "EvidenceStore", "Proof", "ProofFormatError", "Root",
    "inclusion_path", "leaf_hash", "load_proof", "node_hash", "root_of", "verify", "verify_inclusion",
]
