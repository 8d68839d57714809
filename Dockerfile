# One image for every chatbus service: CHATBUS_SERVICE (gateway, agent, history, memory,
# webhooks, simllm) picks the one the default command runs and the health check probes.
#   BASE_IMAGE  any Debian-like image with Python >= 3.11 and its venv module; the default
#               comes from a registry, docker/build-images.sh passes a local Debian base
#   OFFLINE=1   install only from docker/wheelhouse (the dependencies and the build
#               backend, as wheels made on the host by docker/build-images.sh), so the
#               build needs no package index
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, in a layer of their own that a change to the sources keeps.
COPY docker/wheelhouse /wheelhouse
RUN python3 -m venv /opt/chatbus \
    && if [ "$OFFLINE" = 1 ]; then /opt/chatbus/bin/pip install --no-index /wheelhouse/*.whl; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY services services
RUN if [ "$OFFLINE" = 1 ]; then set -- --no-index --find-links /wheelhouse; fi \
    && /opt/chatbus/bin/pip install "$@" /src \
    && /opt/chatbus/bin/python -c 'import services.gateway.app, services.agent.app'

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=chatbus
RUN useradd --create-home --uid 10001 --user-group chatbus
COPY --from=build /opt/chatbus /opt/chatbus
COPY docker/healthcheck.py /opt/chatbus/healthcheck.py
ENV PATH=/opt/chatbus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json \
    GATEWAY_HOST=0.0.0.0 \
    SIMLLM_HOST=0.0.0.0 \
    CHATBUS_SERVICE=gateway
USER chatbus
WORKDIR /home/chatbus
EXPOSE 8000
# Generous: a check is a short Python process, slow on a machine busy starting the stack.
HEALTHCHECK --interval=10s --timeout=10s --start-period=120s --retries=6 \
    CMD ["python", "/opt/chatbus/healthcheck.py"]
CMD ["sh", "-c", "exec python -m \"services.$CHATBUS_SERVICE\""]
