// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import "../NoiaToken.sol";

/// Test only: a NOIA token that, when armed, calls back into `target` with `payload` from inside
/// transfer / transferFrom (as a hostile token with hooks would) and records what happened.
contract ReentrantToken is NoiaToken {
    address public target;
    bytes public payload;
    bool public reentered;
    bool public innerSuccess;
    bytes public innerResult;

    constructor(address holder, uint256 supply) NoiaToken(holder, supply) {}

    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
    }

    function _hook() private {
        if (target == address(0) || reentered) return;
        reentered = true;
        (innerSuccess, innerResult) = target.call(payload);
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        _hook();
        return super.transfer(to, value);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        _hook();
        return super.transferFrom(from, to, value);
    }
}
