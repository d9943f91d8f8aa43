// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

interface IERC20Minimal {
    function balanceOf(address) external view returns (uint256);
    function allowance(address, address) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title The Metanoia exchange: the bundled chain's fill / cancel / settle rules on an EVM chain.
/// @notice Orders are the EIP-712 `Order` of gateway/validator/order.py, with the domain
///         {name "Metanoia Exchange", version "1", chainId, verifyingContract = this}.
///         The fill id is the order digest, as on the bundled chain. Every rejection reverts
///         with `Rejected(reason)` where `reason` is the bundled chain's reason code
///         (gateway/validator/errors.py), so both backends can be compared one to one.
///         A fill whose interval is never settled can be reclaimed (its whole escrow back to the
///         taker) once `settleTimeout` seconds have passed after the interval's end: the bundled
///         chain's rule (docs/chain.md, "Reclaim").
contract Exchange {
    struct Order {
        uint256 nonce;
        uint64 expiry;
        address maker;
        address taker;          // address(0): anyone may fill
        uint64 wh;
        uint64 intervalStart;
        uint256 noia;
        bytes32 grid;
    }

    struct SettleEntry {
        bytes32 fillId;
        uint64 deliveredWh;
        uint256 payment;        // to the maker
        uint256 refund;         // back to the taker
    }

    enum FillStatus { None, Escrowed, Settled, Reclaimed }

    struct Fill {
        address maker;
        uint64 wh;
        address taker;
        uint64 intervalStart;
        FillStatus status;
        uint256 noia;           // the escrow while Escrowed
        bytes32 grid;
        uint64 deliveredWh;     // set when Settled
        uint256 payment;
        uint256 refund;         // Reclaimed: the whole escrow
    }

    bytes32 public constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 public constant ORDER_TYPEHASH = keccak256(
        "Order(uint256 nonce,uint64 expiry,address maker,address taker,uint64 wh,uint64 intervalStart,uint256 noia,bytes32 grid)");
    bytes32 private constant NAME_HASH = keccak256("Metanoia Exchange");
    bytes32 private constant VERSION_HASH = keccak256("1");
    /// secp256k1n / 2: a signature with a larger s is the malleable twin of a low-s one.
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 public constant MAX_SETTLE_ENTRIES = 512;

    uint8 private constant ORDER_FILLED = 1;
    uint8 private constant ORDER_CANCELLED = 2;

    IERC20Minimal public immutable token;
    address public immutable complexAuthority;
    uint64 public immutable intervalSeconds;
    /// Seconds after an interval's end before its unsettled fills may be reclaimed (the genesis's
    /// `settle_timeout` on the bundled chain).
    uint64 public immutable settleTimeout;

    /// maker => order nonce => 0 open / 1 filled / 2 cancelled
    mapping(address => mapping(uint256 => uint8)) public orderStatus;
    mapping(bytes32 => Fill) public fills;
    /// grid => interval start => evidence root of its settlements (fixed by the first batch)
    mapping(bytes32 => mapping(uint64 => bytes32)) public evidenceRoot;
    mapping(bytes32 => mapping(uint64 => bool)) public intervalSettled;

    uint256 private locked = 1;

    error Rejected(string reason);

    event Filled(bytes32 indexed fillId, address indexed maker, address indexed taker, uint256 nonce,
                 uint64 wh, uint64 intervalStart, uint256 noia, bytes32 grid);
    event Cancelled(address indexed maker, uint256 nonce);
    event Settled(bytes32 indexed fillId, uint64 deliveredWh, uint256 payment, uint256 refund);
    event Reclaimed(bytes32 indexed fillId, address indexed taker, uint256 refund);
    event BatchSettled(bytes32 indexed grid, uint64 indexed intervalStart, bytes32 evidenceRoot, uint256 count);

    modifier nonReentrant() {
        if (locked != 1) revert Rejected("reentrancy");
        locked = 2;
        _;
        locked = 1;
    }

    constructor(IERC20Minimal token_, address complexAuthority_, uint64 intervalSeconds_, uint64 settleTimeout_) {
        require(address(token_) != address(0) && complexAuthority_ != address(0), "zero address");
        require(intervalSeconds_ > 0, "zero interval");
        require(settleTimeout_ > 0, "zero settle timeout");
        token = token_;
        complexAuthority = complexAuthority_;
        intervalSeconds = intervalSeconds_;
        settleTimeout = settleTimeout_;
    }

    /// The domain separator, computed for the current chain id (so a fork gets its own).
    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// EIP-712 digest of `order` = its fill id. A static struct ABI-encodes as its fields, each
    /// in one 32-byte word: exactly EIP-712's encodeData.
    function orderDigest(Order calldata order) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(ORDER_TYPEHASH, order));
        return keccak256(abi.encodePacked(hex"1901", domainSeparator(), structHash));
    }

    /// The sender is the taker: it pays `order.noia` into escrow under the fill id (it must have
    /// approved this contract for at least that much). Same checks, same order, as the bundled chain.
    function fill(Order calldata order, bytes calldata signature) external nonReentrant returns (bytes32 fillId) {
        fillId = orderDigest(order);
        // Checks.
        if (_recover(fillId, signature) != order.maker || order.maker == address(0))
            revert Rejected("order_bad_signature");
        if (order.wh == 0 || order.noia == 0) revert Rejected("zero_amount");
        if (block.timestamp >= order.expiry) revert Rejected("order_expired");
        if (order.maker == msg.sender) revert Rejected("self_fill");
        if (order.taker != address(0) && order.taker != msg.sender) revert Rejected("order_taker_mismatch");
        _checkOrderOpen(order.maker, order.nonce);
        if (token.balanceOf(msg.sender) < order.noia) revert Rejected("insufficient_balance");
        if (token.allowance(msg.sender, address(this)) < order.noia) revert Rejected("insufficient_allowance");
        // Effects. (The fill id cannot exist yet: it commits to (maker, nonce), which was open.)
        orderStatus[order.maker][order.nonce] = ORDER_FILLED;
        Fill storage f = fills[fillId];
        f.maker = order.maker;
        f.taker = msg.sender;
        f.wh = order.wh;
        f.intervalStart = order.intervalStart;
        f.noia = order.noia;
        f.grid = order.grid;
        f.status = FillStatus.Escrowed;
        emit Filled(fillId, order.maker, msg.sender, order.nonce, order.wh, order.intervalStart, order.noia,
                    order.grid);
        // Interaction.
        if (!token.transferFrom(msg.sender, address(this), order.noia)) revert Rejected("transfer_failed");
    }

    /// The sender is the maker: its order with this nonce can no longer be filled.
    function cancel(uint256 nonce) external {
        _checkOrderOpen(msg.sender, nonce);
        orderStatus[msg.sender][nonce] = ORDER_CANCELLED;
        emit Cancelled(msg.sender, nonce);
    }

    /// One interval of one grid, by the complex authority. Entries in strictly ascending fill id
    /// order (1..512); one bad entry rejects the whole batch. Each fill settles once.
    function settleBatch(bytes32 grid, uint64 intervalStart, bytes32 root, SettleEntry[] calldata entries)
        external nonReentrant
    {
        uint256 n = entries.length;
        if (n == 0 || n > MAX_SETTLE_ENTRIES) revert Rejected("bad_field");
        if (msg.sender != complexAuthority) revert Rejected("not_authority");
        // uint256 sum of two uint64: cannot overflow.
        if (block.timestamp < uint256(intervalStart) + intervalSeconds) revert Rejected("interval_not_over");
        if (intervalSettled[grid][intervalStart] && evidenceRoot[grid][intervalStart] != root)
            revert Rejected("evidence_root_conflict");
        // Checks and effects for every entry first ...
        for (uint256 i = 0; i < n; ++i) {
            SettleEntry calldata e = entries[i];
            if (i > 0 && entries[i - 1].fillId >= e.fillId) revert Rejected("non_canonical");
            Fill storage f = fills[e.fillId];
            if (f.status == FillStatus.Settled) revert Rejected("fill_already_settled");
            if (f.status == FillStatus.Reclaimed) revert Rejected("fill_reclaimed");
            if (f.status != FillStatus.Escrowed) revert Rejected("unknown_fill");
            if (f.intervalStart != intervalStart) revert Rejected("interval_mismatch");
            if (f.grid != grid) revert Rejected("grid_mismatch");
            if (e.deliveredWh > f.wh) revert Rejected("delivered_exceeds_order");
            // payment + refund == escrow, written so that no sum can overflow.
            uint256 escrow = f.noia;
            if (e.payment > escrow || e.refund != escrow - e.payment) revert Rejected("settle_amount_mismatch");
            f.status = FillStatus.Settled;
            f.noia = 0;
            f.deliveredWh = e.deliveredWh;
            f.payment = e.payment;
            f.refund = e.refund;
            emit Settled(e.fillId, e.deliveredWh, e.payment, e.refund);
        }
        intervalSettled[grid][intervalStart] = true;
        evidenceRoot[grid][intervalStart] = root;
        emit BatchSettled(grid, intervalStart, root, n);
        // ... then the transfers (interactions last).
        for (uint256 i = 0; i < n; ++i) {
            SettleEntry calldata e = entries[i];
            Fill storage f = fills[e.fillId];
            if (e.payment != 0 && !token.transfer(f.maker, e.payment)) revert Rejected("transfer_failed");
            if (e.refund != 0 && !token.transfer(f.taker, e.refund)) revert Rejected("transfer_failed");
        }
    }

    /// Anyone may send it: the whole escrow of an unsettled fill goes back to its taker once the block
    /// time reaches the interval's end plus `settleTimeout`; the fill is closed (no settle, no second
    /// reclaim). Same checks, same order, same reasons as the bundled chain's reclaim.
    function reclaim(bytes32 fillId) external nonReentrant {
        Fill storage f = fills[fillId];
        if (f.status == FillStatus.Settled) revert Rejected("fill_already_settled");
        if (f.status == FillStatus.Reclaimed) revert Rejected("fill_reclaimed");
        if (f.status != FillStatus.Escrowed) revert Rejected("unknown_fill");
        // uint256 sum of three uint64: cannot overflow.
        if (block.timestamp < uint256(f.intervalStart) + intervalSeconds + settleTimeout)
            revert Rejected("reclaim_too_early");
        uint256 refund = f.noia;
        f.status = FillStatus.Reclaimed;
        f.noia = 0;
        f.refund = refund;
        emit Reclaimed(fillId, f.taker, refund);
        if (!token.transfer(f.taker, refund)) revert Rejected("transfer_failed");
    }

    /// The first block time at which `fillId` may be reclaimed (0 for a fill that is not escrowed).
    function reclaimableAt(bytes32 fillId) external view returns (uint256) {
        Fill storage f = fills[fillId];
        if (f.status != FillStatus.Escrowed) return 0;
        return uint256(f.intervalStart) + intervalSeconds + settleTimeout;
    }

    function _checkOrderOpen(address maker, uint256 nonce) private view {
        uint8 status = orderStatus[maker][nonce];
        if (status == ORDER_FILLED) revert Rejected("order_already_filled");
        if (status == ORDER_CANCELLED) revert Rejected("order_cancelled");
    }

    /// ecrecover with Ethereum's rules: 65 bytes r || s || v, v 27 or 28, 0 < r, 0 < s <= n/2.
    /// Returns address(0) for any signature outside them (never equal to a real maker).
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
