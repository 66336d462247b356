# QueueNet image (CPU): the web tier and the model worker, chosen by the command.
#
#   docker build -t queuenet .
#   docker run --rm -p 5000:5000 -e QUEUENET_REDIS_URL=redis://:PASSWORD@redis-host:6379/0 queuenet
#   docker run --rm -e QUEUENET_REDIS_URL=... queuenet queuenet worker
#
# The default model (EfficientNet-Lite0) is built here, once, into /opt/queuenet/models, so
# workers start without building it. No HEALTHCHECK here: web and worker need different ones
# (see docker-compose.yml).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    QUEUENET_HOST=0.0.0.0 \
    QUEUENET_PORT=5000 \
    QUEUENET_MODEL_CACHE_DIR=/opt/queuenet/models

# Fixed numeric ids, so that `USER` is numeric (runAsNonRoot-style checks can verify it).
RUN groupadd --system --gid 10001 queuenet \
    && useradd --system --uid 10001 --gid queuenet --create-home --home-dir /home/queuenet \
        --shell /usr/sbin/nologin queuenet

# Dependencies first (TensorFlow is most of the image), in their own layer, so that a change
# to the source does not reinstall them.
COPY pyproject.toml /tmp/queuenet/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/queuenet/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (dependencies are already satisfied), built outside the final tree.
COPY . /tmp/queuenet
RUN pip install --no-cache-dir /tmp/queuenet && rm -rf /tmp/queuenet

# Build the default model into the cache the workers load it from, and its LiteRT conversion
# (QUEUENET_RUNTIME=auto serves it on CPUs; checked against Keras here and at every start).
# The saved files are created with mode 0600, hence the chmod; run from / so the installed
# package is what gets tested.
WORKDIR /
RUN mkdir -p "$QUEUENET_MODEL_CACHE_DIR" \
    && python -c "from worker.registry import load_model; from worker.runtimes import RuntimeOptions; from pathlib import Path; load_model('efficientnet-lite0', cache_dir=Path('$QUEUENET_MODEL_CACHE_DIR'), runtime=RuntimeOptions('litert'))" \
    && ls -l "$QUEUENET_MODEL_CACHE_DIR"/*.keras "$QUEUENET_MODEL_CACHE_DIR"/*.tflite \
    && chmod -R a+rX /opt/queuenet \
    && rm -rf /root/.keras

USER 10001:10001
WORKDIR /home/queuenet
EXPOSE 5000
CMD ["queuenet", "web"]
