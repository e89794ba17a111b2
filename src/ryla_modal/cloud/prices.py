"""The one GPU price table: what a kept-warm container costs per hour, with its source and date.

Modal bills GPUs by the second while a container runs, busy or idle, so ``min_containers`` and
``buffer_containers`` cost money around the clock.  The prices are Modal's published per-second
list prices; they change, so every figure we print names this table's source and date, and
``ryla warm --json`` carries both.  CPU and memory of the container are billed on top and are
left out (a few cents an hour).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "https://modal.com/pricing"
#: When these numbers were last checked against the source (per-second list prices, USD).
AS_OF = "2026-05-07"

#: USD per second for one GPU, by Modal's GPU type name.
GPU_USD_PER_SECOND: dict[str, float] = {
    "B200": 0.001736,
    "H200": 0.001261,
    "H100": 0.001097,
    "A100-80GB": 0.000694,
    "A100-40GB": 0.000583,
    "L40S": 0.000542,
    "A10G": 0.000306,
    "A10": 0.000306,
    "L4": 0.000222,
    "T4": 0.000164,
}
# Names Modal accepts for the same hardware.
_ALIASES = {"B200+": "B200", "H100!": "H100", "A100": "A100-40GB"}


@dataclass(frozen=True)
class WarmCost:
    """The hourly cost of ``containers`` idle containers with ``gpu`` (``None``: unknown GPU)."""

    gpu: str
    containers: int
    usd_per_hour: float | None
    source: str = SOURCE
    as_of: str = AS_OF

    def describe(self) -> str:
        if self.containers == 0:
            return "nothing kept warm: no GPU is billed while idle"
        what = f"{self.containers} × {self.gpu}"
        if self.usd_per_hour is None:
            return f"{what} kept warm (no price known for {self.gpu}; see {self.source})"
        return (
            f"{what} kept warm ≈ ${self.usd_per_hour:.2f}/hour"
            f" (GPU only; Modal list price {self.source}, as of {self.as_of})"
        )


def hourly_cost(gpu: str, containers: int) -> WarmCost:
    """``gpu`` as in the settings (``"H100"``, ``"A100:2"``): the count multiplies the price."""
    kind, _, count = gpu.partition(":")
    per_container = int(count) if count.isdigit() else 1
    name = _ALIASES.get(kind.upper(), kind.upper())
    per_second = GPU_USD_PER_SECOND.get(name)
    usd = None if per_second is None else per_second * 3600 * per_container * containers
    return WarmCost(gpu=gpu, containers=containers, usd_per_hour=usd)


__all__ = ["AS_OF", "GPU_USD_PER_SECOND", "SOURCE", "WarmCost", "hourly_cost"]
