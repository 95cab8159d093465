# ristretto-onnx on CPU.
#   docker build -t ristretto-onnx .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/work" -v /path/to/zoo:/zoo:ro \
#       ristretto-onnx compress zoo:resnet20-cifar10 out/r20.onnx
# Runs as an unprivileged user; outputs get 0644 (umask 022), readable on the bind mount.
# Layer order: the pinned dependencies first (rebuilt only when docker/requirements-cpu.txt
# changes), the package's code last.
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    RISTRETTO_ZOO=/zoo

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ristretto

WORKDIR /opt/ristretto-onnx
COPY docker/requirements-cpu.txt ./requirements.txt
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY ristretto_onnx ./ristretto_onnx
COPY passes ./passes
COPY runtime ./runtime
COPY zoo ./zoo
RUN pip install --no-deps . && ristretto-onnx --version

USER ristretto
WORKDIR /work
ENTRYPOINT ["ristretto-onnx"]
CMD ["--help"]
