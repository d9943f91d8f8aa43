"""The market: Peer (RFQ), Indexer, Oracle, agents, wallet, settlement (docs/peer.md, ...)."""
