"""The Dockerfiles, checked without a Docker engine (none runs here; issue 10, Deliver 10).

What can be checked statically: every instruction is a Dockerfile instruction, base images are
pinned, the pinned requirements name exactly pyproject's dependencies at versions its bounds
allow, dependencies are installed before the code is copied (so code changes reuse the dependency
layer), every COPY source exists, the image switches to a non-root user before its entrypoint, and
the entrypoint is the console script pyproject declares. Building and running the images is not
tested here.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
IMAGES = {"Dockerfile": ("docker/requirements-cpu.txt", "onnxruntime"),
          "Dockerfile.gpu": ("docker/requirements-gpu.txt", "onnxruntime-gpu")}


def parse(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs; continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word, rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pins(path: Path) -> dict[str, Requirement]:
    reqs = [Requirement(line.split("#")[0]) for line in path.read_text().splitlines()
            if line.split("#")[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_dockerfile_is_well_formed_pinned_and_non_root(dockerfile):
    steps = parse(REPO / dockerfile)
    assert all(word in INSTRUCTIONS for word, _ in steps), [w for w, _ in steps if w not in INSTRUCTIONS]
    words = [w for w, _ in steps]
    assert words[0] == "FROM"
    image = steps[0][1].split()[0]
    name, _, tag = image.partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"base image not pinned: {image}"
    if dockerfile == "Dockerfile.gpu":
        assert name == "nvidia/cuda" and tag.startswith("13.") and "runtime" in tag

    copies = [(i, shlex.split(args)) for i, (w, args) in enumerate(steps) if w == "COPY"]
    for _, parts in copies:
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY source {src} missing"
    installs = [i for i, (w, args) in enumerate(steps) if w == "RUN" and "pip install" in args]
    deps_install = next(i for i in installs if "-r requirements.txt" in steps[i][1])
    code_copies = [i for i, parts in copies if parts[0] in ("ristretto_onnx", "passes", "runtime", "zoo")]
    assert code_copies and deps_install < min(code_copies), "dependencies must be installed before the code"
    assert "--no-deps" in steps[max(installs)][1]  # the package itself adds no unpinned dependency
    packages = set(pyproject()["tool"]["setuptools"]["package-dir"].values())
    assert packages <= {parts[0] for _, parts in copies}, "every package folder is copied"

    user = [(i, args) for i, (w, args) in enumerate(steps) if w == "USER"]
    entry = [(i, args) for i, (w, args) in enumerate(steps) if w == "ENTRYPOINT"]
    assert user and entry and user[-1][0] < entry[-1][0]
    assert user[-1][1] not in ("root", "0") and f"useradd" in " ".join(a for w, a in steps if w == "RUN")
    assert json.loads(entry[-1][1]) == ["ristretto-onnx"]
    assert "ristretto-onnx" in pyproject()["project"]["scripts"]


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_pinned_requirements_match_pyproject(dockerfile):
    req_file, runtime = IMAGES[dockerfile]
    pinned = pins(REPO / req_file)
    declared = {canonicalize_name(Requirement(d).name): Requirement(d) for d in pyproject()["project"]["dependencies"]}
    if runtime == "onnxruntime-gpu":  # the gpu extra replaces onnxruntime
        gpu = [Requirement(d) for d in pyproject()["project"]["optional-dependencies"]["gpu"]]
        declared.pop("onnxruntime")
        declared.update({canonicalize_name(r.name): r for r in gpu})
    assert set(pinned) == set(declared)
    for name, req in pinned.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name} is not pinned exactly"
        assert declared[name].specifier.contains(spec.version), f"{name}=={spec.version} outside pyproject's bounds"
