"""What every benchmark section shares: the result row, the run context, timing,
peer detection and the benchmark volumes.

A section is a function ``run(ctx: Context) -> list[Row]`` registered with
:func:`benchmarks.sections.section`. It measures, it never prints the table itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "learn2reg-hippocampus"

REGTUNE = "regtune"
PEERS = {  # peer name -> import name of the package that must be importable
    "voxelmorph": "voxelmorph",
    "monai": "monai",
    "surface-distance": "surface_distance",
}


@dataclass
class Row:
    """One measured figure.

    section: the section that produced it ("train", "eval", "ttq", ...).
    group:   the comparison group inside the section (e.g. "step 64^3, batch 1"); the
             ratio column compares a row with the best peer row of the same group.
    impl:    who is measured: "regtune" or a peer ("voxelmorph", "monai", "surface-distance").
    variant: how (e.g. "channels_last_3d, batch 4"); free text.
    metric:  the figure's name ("s/step", "s/pair", "dice", ...).
    value:   the figure, or None when the row could not be measured (see status).
    unit:    printed after the value.
    better:  "lower" (times) or "higher" (Dice, pairs/s): decides "best peer" and the ratio.
    extra:   further figures of the same measurement (pairs/s, repeats, max |diff|, ...).
    status:  "ok", "not installed", "skipped" or "error".
    note:    one line for the table notes (architecture differences, estimates, ...).
    ratio:   filled by the runner: value / best peer value for "lower", best peer / value
             for "higher" (so < 1.0 always means better than the best peer).
    """

    section: str
    group: str
    impl: str
    metric: str
    value: float | None
    unit: str = ""
    better: str = "lower"
    variant: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    note: str = ""
    ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.value is not None and math.isfinite(self.value)


def missing_row(section: str, group: str, impl: str, metric: str, status: str, note: str = "", unit: str = "",
                better: str = "lower") -> Row:
    return Row(section, group, impl, metric, None, unit=unit, better=better, status=status, note=note)


@dataclass
class Context:
    """What a section gets: settings of this run and shared, lazily built resources."""

    device: str = "cpu"
    quick: bool = False
    repeats: int = 5
    warmup: int = 2
    seed: int = 0
    data_root: Path | None = None  # None: synthetic volumes
    out_dir: Path = ROOT / "benchmarks" / "results"
    minutes: float = 10.0  # time-to-quality budget per recipe
    compile: bool = False  # also measure torch.compile in the training-step section
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)
    _cache: dict[str, Any] = field(default_factory=dict)

    def peer_available(self, peer: str) -> bool:
        return peer_available(peer)

    def volumes(self):
        """The benchmark volumes as a regtune :class:`~regtune.data.Volumes` (real data
        when present and not ``quick``, else small synthetic phantoms)."""
        if "vols" not in self._cache:
            self._cache["vols"] = load_volumes(self.data_root, self.quick, self.out_dir)
        return self._cache["vols"]

    @property
    def data_label(self) -> str:
        return f"real ({self.data_root.name})" if self.data_root is not None and not self.quick else "synthetic"


_AVAILABLE: dict[str, bool] = {}


def peer_available(peer: str) -> bool:
    """True when the peer package imports (cached). Peers are optional: a missing peer
    becomes a "not installed" row, never an error."""
    if peer not in _AVAILABLE:
        mod = PEERS.get(peer, peer)
        try:
            _AVAILABLE[peer] = importlib.util.find_spec(mod) is not None and importlib.import_module(mod) is not None
        except Exception:  # a broken (or blocked) install counts as not installed
            _AVAILABLE[peer] = False
    return _AVAILABLE[peer]


def load_volumes(data_root: Path | None, quick: bool, out_dir: Path):
    from regtune.config import DataConfig
    from regtune.data import load_folder
    if data_root is not None and not quick:
        return load_folder(data_root, DataConfig(root=str(data_root)))
    from regtune.data.synth import SynthSpec, ensure_dataset
    root = ensure_dataset(out_dir / "synthetic-16", SynthSpec(n_subjects=6, size=16, amplitude=1.5, seed=3))
    return load_folder(root, DataConfig(root=str(root), val_subjects=2, val_pairs=2))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def time_it(fn: Callable[[], Any], repeats: int, warmup: int, device: str = "cpu") -> dict[str, float]:
    """Median / min / max seconds of ``fn`` over ``repeats`` calls after ``warmup``
    untimed calls (CUDA is synchronised around every timed call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}


def machine_info(device: str) -> dict[str, Any]:
    import os
    import platform

    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cpu": _cpu_name(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for peer, mod in PEERS.items():
        if peer_available(peer):
            m = sys.modules[mod]
            info[f"{peer}_version"] = getattr(m, "__version__", "installed")
        else:
            info[f"{peer}_version"] = "not installed"
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"
