"""Images to run: the busybox root filesystem plus a layer with users and groups, under
an image config that says Env, WorkingDir, User, StopSignal and Labels."""
from __future__ import annotations

import io
import json
from typing import Any, Dict, Optional

from ansible_collections.strata.layers.plugins.module_utils._compression import DecodedStream
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import parse_config
from tests.support.tars import LayerTar

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"app:x:1000:1000:app:/home/app:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/:/bin/false\n")
GROUP = b"root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"
USERS = (LayerTar().dir("etc").file("etc/passwd", PASSWD).file("etc/group", GROUP)
         .dir("home", 0o755).dir("home/app", 0o755, uid=1000, gid=1000).bytes())


def ingest(store, data: bytes, parent=None):
    record, _imported, _digests = store.ingest_layer(
        lambda: DecodedStream(io.BytesIO(data).read), parent, "test layer")
    return record


def make_image(store, busybox: bytes, tag: str, config: Optional[Dict[str, Any]] = None):
    """Under the store's write lock: the image, tagged ``tag``."""
    base = ingest(store, busybox)
    users = ingest(store, USERS, base.chain_id)
    raw = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": config if config is not None else {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [base.diff_id, users.diff_id]},
        "history": [{"created_by": "busybox"}, {"created_by": "users"}]}).encode()
    image, _added = store.put_image(parse_config(raw, "test"), {})
    store.tag(image.id, [tag])
    return image
