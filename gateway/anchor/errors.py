"""Anchoring's errors: one exception with a stable reason code (counted, printed, returned in --json)."""

from __future__ import annotations

# relayer
MAIN_UNAVAILABLE = "main_unavailable"          # the main chain's RPC did not answer
SIDE_UNAVAILABLE = "side_unavailable"          # no side-chain validator answered
INSUFFICIENT_SIGNATURES = "insufficient_signatures"   # fewer than > 2/3 of the authorities signed
CONFLICTING_CHECKPOINTS = "conflicting_checkpoints"   # authorities signed different blocks at one height
WRONG_CHAIN = "wrong_chain"                    # the side chain is not the registry's (genesis hash)
BAD_SIGNATURE = "bad_signature"                # a validator's answer does not recover to it / to an authority
BAD_RESPONSE = "bad_response"                  # a malformed answer
NO_EIP1559 = "no_eip1559"                      # the main chain has no base fee: it takes no type-2 tx

# verifier: what a lying or broken side-chain RPC is caught at
NO_CHECKPOINT = "no_checkpoint"                # no anchored checkpoint at or above the block
BAD_HEADER = "bad_header"                      # not a 144-byte header
HEADER_MISSING = "header_missing"              # the RPC did not return a header the proof needs
HEADER_HEIGHT_MISMATCH = "header_height_mismatch"
CHAIN_ID_MISMATCH = "chain_id_mismatch"
PARENT_HASH_MISMATCH = "parent_hash_mismatch"  # header h+1 does not name header h as its parent
CHECKPOINT_HASH_MISMATCH = "checkpoint_hash_mismatch"   # the header at the checkpoint is not the anchored one
STATE_ROOT_MISMATCH = "state_root_mismatch"
TX_UNKNOWN = "tx_unknown"                      # the RPC has no final tx with this hash
TX_HASH_MISMATCH = "tx_hash_mismatch"          # the returned tx does not hash to the asked hash (forged)
TX_NOT_IN_BLOCK = "tx_not_in_block"            # the tx is in another block than the one asked
TX_PROOF_INVALID = "tx_proof_invalid"          # the Merkle proof does not lead to the block's txRoot
BAD_TX = "bad_tx"                              # the proven bytes are not a transaction of this format


class AnchorError(Exception):
    """``reason``: a code above (or a contract's revert reason); ``detail``: prose."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason
