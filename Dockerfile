# ristretto-onnx on CPU. Build: docker build -t ristretto-onnx .
# Run:   docker run --rm -v $PWD:/work -v /path/to/zoo:/zoo -e RISTRETTO_ZOO=/zoo ristretto-onnx compress ...
FROM python:3.11-slim
WORKDIR /opt/ristretto-onnx
COPY pyproject.toml README.md ./
COPY ristretto_onnx ./ristretto_onnx
COPY passes ./passes
COPY runtime ./runtime
COPY zoo ./zoo
RUN pip install --no-cache-dir . && ristretto-onnx --version
WORKDIR /work
ENTRYPOINT ["ristretto-onnx"]
