// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Side-chain checkpoints, each signed by more than two thirds of the side chain's authorities.
/// @notice A checkpoint is the EIP-712 `Checkpoint` of gateway/validator/checkpoint.py, with the domain
///         {name "Metanoia Checkpoints", version "1", chainId = this chain, verifyingContract = this}.
///         `genesisHash` names the side chain (its genesis commits to its chain id and authorities), so a
///         signature is bound to one side chain, one registry and one EVM chain. Every rejection reverts
///         with `Rejected(reason)`, reason codes in the style of gateway/validator/errors.py.
contract CheckpointRegistry {
    struct Checkpoint {
        bytes32 genesisHash;
        uint64 height;
        bytes32 blockHash;
        bytes32 stateRoot;
    }

    struct Stored {
        bytes32 blockHash;
        bytes32 stateRoot;
    }

    bytes32 public constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 public constant CHECKPOINT_TYPEHASH =
        keccak256("Checkpoint(bytes32 genesisHash,uint64 height,bytes32 blockHash,bytes32 stateRoot)");
    bytes32 private constant NAME_HASH = keccak256("Metanoia Checkpoints");
    bytes32 private constant VERSION_HASH = keccak256("1");
    /// secp256k1n / 2: a signature with a larger s is the malleable twin of a low-s one.
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 public constant MAX_AUTHORITIES = 256;

    bytes32 public immutable genesisHash;
    address[] private authorityList;
    mapping(address => bool) public isAuthority;

    /// Height of the latest checkpoint (0: none yet; block 0 is the genesis itself).
    uint64 public latestHeight;
    mapping(uint64 => Stored) private checkpoints;

    error Rejected(string reason);

    event CheckpointSubmitted(uint64 indexed height, bytes32 blockHash, bytes32 stateRoot, address submitter,
                              uint256 signatures);

    /// `authorities_`: the side chain's authority set (its genesis `authorities`), no zero, no duplicate.
    constructor(bytes32 genesisHash_, address[] memory authorities_) {
        require(genesisHash_ != bytes32(0), "zero genesis");
        require(authorities_.length > 0 && authorities_.length <= MAX_AUTHORITIES, "authority count");
        for (uint256 i = 0; i < authorities_.length; ++i) {
            address a = authorities_[i];
            require(a != address(0), "zero address");
            require(!isAuthority[a], "duplicate authority");
            isAuthority[a] = true;
            authorityList.push(a);
        }
        genesisHash = genesisHash_;
    }

    function authorities() external view returns (address[] memory) {
        return authorityList;
    }

    /// Signatures needed: the least k with 3k > 2n (strictly more than two thirds).
    function threshold() public view returns (uint256) {
        return (2 * authorityList.length) / 3 + 1;
    }

    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function checkpointDigest(Checkpoint calldata cp) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(CHECKPOINT_TYPEHASH, cp));
        return keccak256(abi.encodePacked(hex"1901", domainSeparator(), structHash));
    }

    /// Anyone may submit; the signatures (65 bytes r || s || v each) carry the authority. They are
    /// ordered by signer address, strictly ascending, so each authority counts once. Any bad signature,
    /// non-authority or misordered signer rejects the whole submission.
    function submit(Checkpoint calldata cp, bytes[] calldata signatures) external {
        if (cp.genesisHash != genesisHash) revert Rejected("wrong_chain");
        if (cp.blockHash == bytes32(0) || cp.stateRoot == bytes32(0)) revert Rejected("bad_field");
        if (cp.height <= latestHeight) revert Rejected("checkpoint_not_monotonic");
        uint256 n = signatures.length;
        if (n > authorityList.length) revert Rejected("bad_field");
        bytes32 digest = checkpointDigest(cp);
        address prev = address(0);
        for (uint256 i = 0; i < n; ++i) {
            address signer = _recover(digest, signatures[i]);
            if (signer == address(0)) revert Rejected("bad_signature");
            if (!isAuthority[signer]) revert Rejected("not_authority");
            if (signer == prev) revert Rejected("duplicate_signer");
            if (signer < prev) revert Rejected("non_canonical");
            prev = signer;
        }
        if (3 * n <= 2 * authorityList.length) revert Rejected("insufficient_signatures");
        latestHeight = cp.height;
        checkpoints[cp.height] = Stored(cp.blockHash, cp.stateRoot);
        emit CheckpointSubmitted(cp.height, cp.blockHash, cp.stateRoot, msg.sender, n);
    }

    /// The latest checkpoint: (0, 0, 0) before the first.
    function latest() external view returns (uint64 height, bytes32 blockHash, bytes32 stateRoot) {
        Stored storage s = checkpoints[latestHeight];
        return (latestHeight, s.blockHash, s.stateRoot);
    }

    /// The checkpoint at `height`: (0, 0) if there is none (block hashes are never 0).
    function checkpointAt(uint64 height) external view returns (bytes32 blockHash, bytes32 stateRoot) {
        Stored storage s = checkpoints[height];
        return (s.blockHash, s.stateRoot);
    }

    /// ecrecover with Ethereum's rules: 65 bytes r || s || v, v 27 or 28, 0 < r, 0 < s <= n/2.
    /// Returns address(0) for any signature outside them.
    function _recover(bytes32 digest, bytes calldata sig) private pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v != 27 && v != 28) return address(0);
        if (uint256(r) == 0 || uint256(s) == 0 || uint256(s) > HALF_N) return address(0);
        return ecrecover(digest, v, r, s);
    }
}
