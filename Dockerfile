# syntax=docker/dockerfile:1
# infera's container image: the server binary, ONNX Runtime's library and the example model
# repository, run as a non-root user.
#   docker build -t infera .
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/keys.toml:/etc/infera/keys.toml:ro \
#     infera serve --model-repository /models --host 0.0.0.0 --auth-keys /etc/infera/keys.toml
# Off loopback the server needs keys (or --insecure-no-auth behind your own gateway).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Only the server: the trainer (burn) is not part of the image.
RUN cargo build --profile dist --locked --bin infera \
    && strip target/dist/infera

# ONNX Runtime's shared library comes from its PyPI wheel, the build the server is tested with.
FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir onnxruntime==1.31.1 \
    && cp /usr/local/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 /libonnxruntime.so.1.31.1

FROM debian:bookworm-slim
# Unpinned on purpose: the slim image's own versions, with Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin infera \
    && mkdir -p /var/lib/infera \
    && chown 10001:10001 /var/lib/infera
COPY --from=build /src/target/dist/infera /usr/local/bin/infera
COPY --from=onnxruntime /libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so.1.31.1
COPY examples/model_repository /models
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.1.31.1 \
    INFERA_MODEL_REPOSITORY=/models \
    INFERA_LOG_FORMAT=json
USER 10001:10001
# HTTP (KServe v2, /predict, the web page), gRPC, metrics: Triton's ports.
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["infera"]
CMD ["serve", "--host", "0.0.0.0"]
