"""Image archives built at test time: OCI layouts by hand (so every byte is known),
docker-archive and oci-archive written from them by skopeo (real producers)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from typing import List, Optional, Sequence

MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def _blob(layout: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest[7:])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return digest


def config_for(layers: Sequence[bytes], history: Optional[List[dict]] = None,
               created: str = "2024-01-01T00:00:00Z", arch: str = "amd64") -> bytes:
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = {"architecture": arch, "os": "linux", "created": created,
              "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": history or [{"created": created, "created_by": "layer %d" % i}
                                     for i in range(len(layers))]}
    return json.dumps(config, sort_keys=True).encode()


def make_oci_layout(layout: str, layers: Sequence[bytes], ref: Optional[str] = "latest",
                    compress: bool = True, config: Optional[bytes] = None) -> dict:
    """Write an OCI image layout; returns digests of what it wrote."""
    os.makedirs(layout, exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    config = config or config_for(layers)
    descs = []
    for layer in layers:
        data = gzip.compress(layer, mtime=0) if compress else layer
        descs.append({"mediaType": MT_LAYER_GZ if compress else MT_LAYER,
                      "digest": _blob(layout, data), "size": len(data)})
    config_digest = _blob(layout, config)
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": descs}).encode()
    manifest_digest = _blob(layout, manifest)
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": len(manifest)}
    if ref:
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as handle:
            index = json.load(handle)
    index["manifests"].append(desc)
    with open(index_path, "w") as handle:
        json.dump(index, handle)
    return {"config": config_digest, "manifest": manifest_digest, "layers": descs,
            "image_id": config_digest}


def skopeo(*args: str) -> None:
    if shutil.which("skopeo") is None:
        import pytest
        pytest.skip("skopeo is not installed")
    subprocess.run(["skopeo", "--insecure-policy"] + list(args), check=True,
                   capture_output=True, text=True)
