"""What a pooled kernel says of itself on its set-up comm (jkp.user): idle, handed out (to
whom, under which gateway id, directory and env) or spoiled, and its pool's spec."""

from __future__ import annotations

import dataclasses
from typing import Any

from jkp.services.gateway import GatewayClient
from jkp.user import (
    KERNEL_HANDED,
    KERNEL_IDLE,
    KERNEL_SPOILED,
    SET_UP_QUERY,
    set_up_comm_id,
)


@dataclasses.dataclass(frozen=True)
class KernelWord:
    """A pooled kernel's answer about itself."""

    status: str  # KERNEL_IDLE, KERNEL_HANDED or KERNEL_SPOILED
    spec: str | None = None
    pooled_at: float | None = None
    # Once handed out: what its set-up carried (user_id, alias, pool, target, env, handed_at).
    handed: dict[str, Any] | None = None

    @classmethod
    def from_answer(cls, data: dict[str, Any]) -> KernelWord | None:
        """The word in a set-up comm's answer; None for any other answer (ok, an error)."""
        status = data.get("status")
        if status not in (KERNEL_IDLE, KERNEL_HANDED, KERNEL_SPOILED):
            return None
        handed = data.get("handed")
        return cls(
            status,
            data.get("spec"),
            data.get("pooled_at"),
            handed if isinstance(handed, dict) else None,
        )

    def handed_record(self) -> dict[str, Any]:
        """Its record for the handed-out hash: ``{user_id, handed_at}``, and ``alias``."""
        handed = self.handed or {}
        record = {"user_id": handed.get("user_id"), "handed_at": handed.get("handed_at")}
        if handed.get("alias"):
            record["alias"] = handed["alias"]
        return record

    def binding(self, kernel_id: str) -> dict[str, Any] | None:
        """The gateway binding of its alias (as a warm create wrote it), None without one."""
        handed = self.handed or {}
        if not handed.get("alias"):
            return None
        return {
            "kernel_id": kernel_id,
            "pool": handed.get("pool"),
            "working_dir": handed.get("target"),
            "env": handed.get("env") or {},
        }


def handout_record(user_id: str, alias: str, pool: str) -> dict[str, str]:
    """What a set-up tells the kernel of its hand-out, for it to keep: the user, the gateway
    id a create binds it under ('' for a pop) and its pool's kernel spec."""
    return {"user_id": user_id, "alias": alias, "pool": pool}


async def ask_kernel(gateway: GatewayClient, kernel_id: str, timeout: float) -> KernelWord | None:
    """What a kernel says of itself, changing nothing; None from a kernel without jkp's
    set-up comm (jkp did not pool it, or it was restarted)."""
    answer = await gateway.comm_query(kernel_id, set_up_comm_id(kernel_id), SET_UP_QUERY, timeout)
    return None if answer is None else KernelWord.from_answer(answer)
