"""Anchoring the bundled side chain to a main chain (issue 7; docs/anchoring.md).

- ``collect``: > 2/3 of the authorities' checkpoint signatures from the validators (``chain_signCheckpoint``)
- ``registry``: the CheckpointRegistry's ABI as data; reads, ``submit`` calldata
- ``evm``: the EVM JSON-RPC calls anchoring needs; EIP-155 transactions signed locally
- ``journal``: the relayer's crash-safe record of what it signed for the main chain
- ``relayer``: ``metanoia chain anchor``: every N final blocks, a checkpoint into the registry
- ``verify``: ``metanoia chain verify --checkpoint``: a block and a tx proven against an anchored checkpoint
- ``errors``: ``AnchorError(reason)`` and the reason codes
"""
