"""What the household and operator pages show, gathered from the gateway's real data (docs/web-readmodel.md).

``Sources`` says where a complex's data lives; ``Complex.open`` opens the wallet and
the chain domain once per process. ``household_view`` / ``operator_view`` return frozen
dataclasses; ``actions`` changes manual orders and policies through the market's code;
``charts`` renders the interval series as SVG. The web app renders these results.
"""

from __future__ import annotations

from .actions import KEEP, cancel_manual_order, chain_client, place_manual_order, set_policy
from .charts import balance_chart, household_chart, interval_chart
from .chain import ChainView, ValidatorStatus, chain_view
from .fills import FillView
from .household import BillView, HouseholdView, IntervalPoint, LivePower, PolicyView, RecView, Totals, household_view
from .jsonable import to_json
from .operator import BalancePoint, DeviceRow, OperatorView, SettlementRow, operator_view
from .sources import Complex, ReadModelError, Sources

__all__ = ["Sources", "Complex", "ReadModelError", "household_view", "operator_view", "HouseholdView", "OperatorView",
           "LivePower", "Totals", "IntervalPoint", "BillView", "PolicyView", "RecView", "FillView", "DeviceRow",
           "BalancePoint", "SettlementRow", "ChainView", "ValidatorStatus", "chain_view", "place_manual_order",
           "cancel_manual_order", "set_policy", "chain_client", "KEEP", "household_chart", "balance_chart",
           "interval_chart", "to_json"]
