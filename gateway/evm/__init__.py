"""The EVM backend (issue 7): the Solidity contracts, their compilation with solcjs, a local anvil."""
