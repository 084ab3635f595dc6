"""Does the installed torch build have kernels for a GPU? Pure functions, so they are tested on cases.

`torch.cuda.get_arch_list()` names what the build carries: `sm_XY` is machine code (SASS) for compute
capability X.Y, `compute_XY` is PTX that the driver can JIT-compile for X.Y and anything newer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

Verdict = Literal["PASS", "WARN", "FAIL"]
Capability = tuple[int, int]

_ARCH = re.compile(r"^(sm|compute)_(\d+)([af]?)$")

# The first CUDA release that compiles for each architecture newer than Hopper (CUDA release notes).
# Hopper and older are in every CUDA build PyTorch still publishes.
FIRST_CUDA: dict[Capability, Capability] = {
    (10, 0): (12, 8), (10, 1): (12, 8), (12, 0): (12, 8),  # B200, GB200, RTX 50xx / RTX PRO 6000
    (10, 3): (12, 9), (12, 1): (12, 9),                    # B300, DGX Spark (GB10)
    (11, 0): (13, 0),                                      # Jetson Thor
}
OLDEST_TORCH_CUDA = (12, 6)  # the oldest CUDA of PyTorch's current wheel indexes; also the last with Volta


def parse_arch(entry: str) -> tuple[str, Capability, str] | None:
    """'sm_90a' -> ('sm', (9, 0), 'a'); None for what is not a CUDA architecture (e.g. ROCm's gfx90a)."""
    match = _ARCH.match(entry)
    if match is None:
        return None
    kind, digits, suffix = match.groups()
    return kind, (int(digits[:-1]), int(digits[-1])), suffix


def runs_on(entry: str, capability: Capability) -> Literal["native", "jit"] | None:
    """How code compiled for `entry` runs on a device of `capability`: natively, by PTX JIT, or not at all."""
    parsed = parse_arch(entry)
    if parsed is None:
        return None
    kind, (major, minor), suffix = parsed
    if suffix == "a":  # arch-specific features (sm_90a): that exact capability only
        return "native" if capability == (major, minor) else None
    same_family = capability[0] == major and capability[1] >= minor  # SASS runs on later minors of its major
    if same_family:
        return "native" if kind == "sm" else "jit"
    if kind == "compute" and suffix == "" and capability > (major, minor):  # plain PTX is forward-compatible
        return "jit"
    return None


def _cuda_tag(version: Capability) -> str:
    return f"cu{version[0]}{version[1]}"


def uv_index_fix(version: Capability, why: str) -> str:
    """One sentence: how to make uv install torch from PyTorch's wheel index for this CUDA version."""
    tag = _cuda_tag(version)
    return (f"{why}: in pyproject.toml add a [[tool.uv.index]] with name = \"pytorch-{tag}\", "
            f"url = \"https://download.pytorch.org/whl/{tag}\" and explicit = true, map torch and "
            f"torchvision to it under [tool.uv.sources] (torch = {{ index = \"pytorch-{tag}\" }}), then run "
            f"`uv sync` (the NVIDIA driver must support CUDA {version[0]}.{version[1]}; "
            f"`nvidia-smi` shows it).")


def torch_build_fix(capability: Capability, arch_list: Sequence[str]) -> str:
    """Which CUDA build of torch has kernels for `capability`, and how to point uv at it."""
    sm = f"sm_{capability[0]}{capability[1]}"
    native = [parsed[1] for parsed in map(parse_arch, arch_list) if parsed and parsed[0] == "sm"]
    if native and capability < min(native):  # newer CUDA builds drop old GPUs: go back, not forward
        oldest = f"sm_{min(native)[0]}{min(native)[1]}"
        return uv_index_fix(OLDEST_TORCH_CUDA, f"This torch build starts at {oldest}, so install an older "
                            f"CUDA build that still ships {sm} (check its torch.cuda.get_arch_list())")
    if capability <= (9, 0):
        needed = OLDEST_TORCH_CUDA
    elif capability in FIRST_CUDA:
        needed = max(FIRST_CUDA[capability], OLDEST_TORCH_CUDA)
    else:
        return (f"Compute capability {capability[0]}.{capability[1]} is newer than this checker knows: "
                f"install the newest CUDA build of torch (https://pytorch.org/get-started/locally/) whose "
                f"torch.cuda.get_arch_list() lists {sm}, pointing uv at its index with [[tool.uv.index]] "
                f"(explicit = true) and [tool.uv.sources], then run `uv sync`.")
    why = f"Install torch built for CUDA {needed[0]}.{needed[1]} or newer, which has {sm} kernels"
    return uv_index_fix(needed, why)


def arch_verdict(capability: Capability, arch_list: Sequence[str]) -> tuple[Verdict, str, str]:
    """(status, what was found, fix) for a device of `capability` under a build listing `arch_list`."""
    cap = f"{capability[0]}.{capability[1]}"
    if not any(parse_arch(entry) for entry in arch_list):
        return ("WARN", f"the torch build lists no CUDA architectures ({', '.join(arch_list) or 'none'})",
                "Install a CUDA build of torch with `uv sync`; a CPU-only or ROCm build cannot be checked.")
    how = {entry: runs_on(entry, capability) for entry in arch_list}
    native = [entry for entry, mode in how.items() if mode == "native"]
    jit = [entry for entry, mode in how.items() if mode == "jit"]
    listed = " ".join(arch_list)
    if native:
        return "PASS", f"capability {cap} runs the build's {native[-1]} kernels (build: {listed})", ""
    fix = torch_build_fix(capability, arch_list)
    if jit:
        return ("WARN", f"no sm kernels for capability {cap}: the driver JIT-compiles the build's {jit[-1]} "
                        f"PTX (minutes at first start-up, slower kernels; build: {listed})", fix)
    return ("FAIL", f"this torch build has no kernels for capability {cap} (build: {listed}); CUDA calls "
                    f"fail with 'no kernel image is available for execution on the device'", fix)
