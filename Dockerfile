# rnnlm: the HTTP service with the shipped weights, CPU-only PyTorch, non-root.
#   docker build -t rnnlm . && docker run -p 8000:8000 rnnlm
# BASE_IMAGE must provide python3 (≥ 3.10) with venv; point it at a local image where no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# CPU wheels only: no CUDA libraries end up in the image. PIP_FIND_LINKS may name a directory of local wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=${PIP_FIND_LINKS}
WORKDIR /src
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" "torch==2.13.0" numpy
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
RUN /opt/venv/bin/pip install . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3*/site-packages/torch/include /opt/venv/lib/python3*/site-packages/torch/test

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin rnnlm
COPY --from=build /opt/venv /opt/venv
COPY weights /srv/rnnlm/weights
WORKDIR /srv/rnnlm
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    RNNLM_HOST=0.0.0.0 \
    RNNLM_PORT=8000 \
    RNNLM_WEIGHTS=/srv/rnnlm/weights/rnn.safetensors
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RNNLM_PORT', '8000') + '/health', timeout=4)"]
# SIGTERM drains: /ready and new requests get 503, requests in flight finish (RNNLM_DRAIN_SECONDS), exit 0.
STOPSIGNAL SIGTERM
CMD ["rnnlm-serve"]
