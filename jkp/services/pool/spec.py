"""What a pool's kernels are started as: the start request's env, its fingerprint, its check."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Protocol

from traitlets import TraitError

from jkp.user import SET_UP_COMM_TARGET, SET_UP_PROTOCOL

# What EG refuses in a KERNEL_* value (it would answer 400 to every start).
_KERNEL_ENV_FORBIDDEN = ("$", "`", "\n", "\r")
_KERNEL_ENV_MAX_LENGTH = 4096


class StartOptions(Protocol):
    """The options of a pool that say what its kernels are started as (PoolManager's traits,
    or the PoolOptions built from them)."""

    kernel_name: str
    kernel_user_name: str
    kernel_namespace: str
    kernel_image: str
    nfs_volume_server: str
    nfs_mount_path: str
    working_dir: str
    init_code: str


def kernel_start_env(options: StartOptions, kernel_id: str) -> dict[str, str]:
    """The ``env`` of EG's start request for a pooled kernel with id ``kernel_id``."""
    env = {
        "KERNEL_ID": kernel_id,
        "KERNEL_USERNAME": options.kernel_user_name,
        "KERNEL_NAMESPACE": options.kernel_namespace,
        "KERNEL_IMAGE": options.kernel_image,
        "KERNEL_WORKING_DIR": options.working_dir,
    }
    if options.nfs_volume_server:
        volume = {"server": options.nfs_volume_server, "path": options.nfs_mount_path}
        env["KERNEL_VOLUMES"] = json.dumps([{"name": "shared-vol", "nfs": volume}])
        env["KERNEL_VOLUME_MOUNTS"] = json.dumps(
            [{"name": "shared-vol", "mountPath": options.working_dir}]
        )
    return env


def spec_fingerprint(options: StartOptions) -> str:
    """What the pool's kernels are started as (kernel spec, start env, init_code, the set-up
    they serve), hashed."""
    env = kernel_start_env(options, "")
    env.pop("KERNEL_ID")
    spec = {
        "kernel_name": options.kernel_name,
        "env": env,
        "init_code": options.init_code,
        # Kernels pooled by a jkp with another set-up protocol are rolled over.
        "set_up": [SET_UP_COMM_TARGET, SET_UP_PROTOCOL],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def check_kernel_env(options: StartOptions) -> None:
    """Refuse at start-up the KERNEL_* values EG would refuse with 400 at every start."""
    for name, value in kernel_start_env(options, str(uuid.uuid4())).items():
        bad = next((c for c in _KERNEL_ENV_FORBIDDEN if c in value), None)
        if bad is not None or len(value) > _KERNEL_ENV_MAX_LENGTH:
            why = f"contains {bad!r}" if bad else f"is over {_KERNEL_ENV_MAX_LENGTH} characters"
            raise TraitError(
                f"{name} {why}, which Enterprise Gateway refuses; check the PoolManager "
                "options it comes from"
            )
