# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage drivers: how layers and container layers sit on disk.

Every driver implements ``drivers._base.Driver`` and passes the same contract suite
(tests/unit/plugins/module_utils/drivers/test_contract.py).
"""
