"""Build the QuantizeSim kernel library (``kernels/``) from source.

The library is compiled against onnxruntime's C API headers, which the PyPI wheel does not ship
and which must never be copied into this repository. They are taken at build time from
``ORT_INCLUDE_DIR`` (a folder holding ``onnxruntime_cxx_api.h``) or from Debian trixie's
``libonnxruntime-dev`` package (onnxruntime 1.21, C API 21), fetched with ``apt-get download``
through a private apt configuration in the build folder, so the system's apt state is never
touched. A library built on the 1.21 headers loads on onnxruntime 1.21 and every later version
(the C API is append-only; ``RegisterCustomOps`` checks ``GetApi(21)``).

Two libraries, one source: ``libristretto_kernels.so`` (CPU kernel, g++ only) and, when ``nvcc``
is found, ``libristretto_kernels_cuda.so`` (the same CPU kernel plus the CUDA kernel, CUDA runtime
linked statically, sm_90 code plus PTX by default; ``RISTRETTO_CUDA_ARCH`` overrides).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ristretto_onnx.errors import RistrettoError

#: The repository's kernel sources (present in a source checkout, not in a wheel).
SOURCE_DIR = Path(__file__).resolve().parent.parent / "kernels"
CPU_LIBRARY = "libristretto_kernels.so"
CUDA_LIBRARY = "libristretto_kernels_cuda.so"
CUDA_TEST = "qsim_cuda_test"
HEADER = "onnxruntime_cxx_api.h"
TRIXIE = "deb [trusted=yes] http://deb.debian.org/debian trixie main"
CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math",
            "-ffp-contract=off"]


def build_dir() -> Path:
    """Where the libraries are built: ``RISTRETTO_KERNELS_BUILD`` or ``build/kernels`` in the checkout."""
    env = os.environ.get("RISTRETTO_KERNELS_BUILD")
    return Path(env) if env else SOURCE_DIR.parent / "build" / "kernels"


@dataclass(frozen=True)
class BuildResult:
    cpu: Path
    cuda: Path | None
    include_dir: Path
    log: str


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise RistrettoError(f"cannot build the kernel library: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise RistrettoError(f"cannot build the kernel library: {cmd[0]} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-400:]
        raise RistrettoError(f"cannot build the kernel library: {' '.join(cmd[:3])} ... failed: {tail}")
    return done.stdout + done.stderr


def find_headers() -> Path | None:
    """The onnxruntime include folder from ``ORT_INCLUDE_DIR`` or an earlier fetch, if any."""
    env = os.environ.get("ORT_INCLUDE_DIR")
    if env:
        for cand in (Path(env), Path(env) / "onnxruntime"):
            if (cand / HEADER).is_file():
                return cand
        raise RistrettoError(f"ORT_INCLUDE_DIR={env} holds no {HEADER}")
    fetched = build_dir() / "ort-headers" / "usr" / "include" / "onnxruntime"
    return fetched if (fetched / HEADER).is_file() else None


def fetch_headers() -> Path:
    """Download Debian trixie's libonnxruntime-dev with a private apt config and unpack it."""
    found = find_headers()
    if found is not None:
        return found
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RistrettoError("cannot fetch onnxruntime's headers: apt-get/dpkg not found; "
                             "set ORT_INCLUDE_DIR to a folder with onnxruntime_cxx_api.h")
    out = build_dir() / "ort-headers"
    with tempfile.TemporaryDirectory(prefix="ristretto-apt-") as tmp:
        t = Path(tmp)
        (t / "lists" / "partial").mkdir(parents=True)
        (t / "cache" / "archives" / "partial").mkdir(parents=True)
        (t / "sources.list").write_text(TRIXIE + "\n")
        opts = [f"-oDir::Etc::SourceList={t / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
                f"-oDir::State::Lists={t / 'lists'}", f"-oDir::Cache={t / 'cache'}", "-oDebug::NoLocking=1",
                "-oAPT::Sandbox::User=root", "-qq"]
        _run(["apt-get", *opts, "update"], cwd=t, timeout=300)
        _run(["apt-get", *opts, "download", "libonnxruntime-dev"], cwd=t, timeout=300)
        debs = sorted(t.glob("libonnxruntime-dev_*.deb"))
        if not debs:
            raise RistrettoError("cannot fetch onnxruntime's headers: apt-get downloaded no libonnxruntime-dev")
        out.mkdir(parents=True, exist_ok=True)
        _run(["dpkg", "-x", str(debs[0]), str(out)])
    found = find_headers()
    if found is None:
        raise RistrettoError(f"libonnxruntime-dev unpacked into {out} holds no {HEADER}")
    return found


def _atomic_link(tmp: Path, final: Path) -> Path:
    os.replace(tmp, final)  # a half-written library is never loaded
    return final


def build(*, cuda: bool | None = None, cuda_arch: str | None = None) -> BuildResult:
    """Build the CPU library and (``cuda=None``: when nvcc is found) the CUDA one."""
    if not (SOURCE_DIR / "ristretto_kernels.cc").is_file():
        raise RistrettoError(f"kernel sources not found in {SOURCE_DIR} (build from a source checkout)")
    if shutil.which("g++") is None:
        raise RistrettoError("cannot build the kernel library: g++ is not installed")
    inc = fetch_headers()
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    src = SOURCE_DIR / "ristretto_kernels.cc"
    log = _run(["g++", *CXXFLAGS, "-shared", f"-I{inc}", f"-I{SOURCE_DIR}", str(src),
                "-o", str(out / f"{CPU_LIBRARY}.tmp")])
    cpu = _atomic_link(out / f"{CPU_LIBRARY}.tmp", out / CPU_LIBRARY)
    nvcc = shutil.which("nvcc")
    built_cuda = None
    if cuda or (cuda is None and nvcc):
        if nvcc is None:
            raise RistrettoError("cannot build the CUDA kernel library: nvcc is not installed")
        arch = cuda_arch or os.environ.get("RISTRETTO_CUDA_ARCH", "90")
        gencode = f"arch=compute_{arch},code=[sm_{arch},compute_{arch}]"
        log += _run([nvcc, "-O3", "-std=c++17", "-gencode", gencode, "-Xcompiler", "-fPIC,-fvisibility=hidden",
                     f"-I{SOURCE_DIR}", "-c", str(SOURCE_DIR / "qsim_cuda.cu"), "-o", str(out / "qsim_cuda.o")])
        log += _run(["g++", *CXXFLAGS, "-DRISTRETTO_WITH_CUDA", f"-I{inc}", f"-I{SOURCE_DIR}", "-c", str(src),
                     "-o", str(out / "ristretto_kernels_cuda.o")])
        log += _run([nvcc, "-shared", "-cudart", "static", str(out / "ristretto_kernels_cuda.o"),
                     str(out / "qsim_cuda.o"), "-o", str(out / f"{CUDA_LIBRARY}.tmp")])
        built_cuda = _atomic_link(out / f"{CUDA_LIBRARY}.tmp", out / CUDA_LIBRARY)
        # the standalone GPU check (no onnxruntime): bench/device_kernels.py runs it
        log += _run([nvcc, "-O3", "-std=c++17", "-gencode", gencode, f"-I{SOURCE_DIR}",
                     str(SOURCE_DIR / "qsim_cuda_test.cu"), str(SOURCE_DIR / "qsim_cuda.cu"),
                     "-o", str(out / CUDA_TEST)])
    return BuildResult(cpu, built_cuda, inc, log)
