"""The chain core: formats, state machine and storage of the bundled PoA chain.

Defined once here and shared by the validator, the chain client, the market and
the EVM backend:

- ``order``: the EIP-712 order (domain, Order, digest = fill id, sign/recover)
- ``tx``: the transaction format (transfer, fill, cancel, settle, checkpoint),
  strict decoder, ``verify_tx`` (pure, for process pools)
- ``block``: header and block encoding, tx Merkle root and proofs
- ``state``: state keys and values, the write overlay, the AdHash state root
- ``execute``: ``apply_tx`` and ``execute_block`` / ``build_block`` (pure)
- ``genesis``: the genesis JSON file and its loader
- ``storage``: ``MemoryStore`` and ``SqliteStore`` behind ``ChainStore``
- ``errors``: ``ChainError`` and its reason codes

Consensus, networking and JSON-RPC come on top of these (docs/chain.md).
"""
