# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker's own storage (dockerd's data root), one concept per file.

* ``layout``: the metadata dockerd keeps under ``image/<driver>/`` (layerdb, mounts,
  imagedb, repositories.json, distribution) and ``containers/<id>/config.v2.json``;
* ``tarsplit``: Docker's ``tar-split.json.gz`` (vbatts/tar-split), to re-emit a layer's
  tar byte for byte from a driver's files;
* ``graph``: how each graph driver (overlay2, fuse-overlayfs, vfs, btrfs) lays a layer
  out on disk, as dockerd 20.10 does;
* ``daemon``: the running daemon (``GET /info`` over its socket) and ``daemon.json``;
* ``candidates``: the probe's answers under Docker's driver names;
* ``migrate``: offline conversion of a data root from one driver to another.

Nothing here imports ``ansible`` or ``_ops``.
"""
