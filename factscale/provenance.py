"""What produced a result: library versions and the code's git sha, recorded in every corpus manifest and
every result row."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("factscale", "torch", "lightning", "transformers", "tokenizers", "polars", "polars-runtime-32",
                "numpy", "scipy", "lmfit"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    torch = sys.modules.get("torch")  # only where training already loaded it: a corpus build never imports torch
    if torch is not None:
        # the CPU kernels torch dispatches to (AVX2 / AVX512 / ...) and its threads change floating-point sums,
        # hence a few memorized facts per run between machines with the same packages
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["torch_threads"] = torch.get_num_threads()
        out["cpu"] = _cpu_model()
        # variables that change which kernels run (docs/development.md: they move results, measured)
        out.update({f"env_{k}": v for k in DISPATCH_ENV if (v := os.environ.get(k)) is not None})
    return out


DISPATCH_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_sha() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
