# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One file per module: params -> engine calls -> result, and the module's "reason" logic.

``plugins/modules/<name>.py`` calls ``_ops/<name>.py``; nothing below the modules and
``_ops`` imports from here (docs/design.md, the module map).
"""
