# One image for every chatbus service; the command picks the service.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY services services
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 chatbus
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER chatbus
WORKDIR /home/chatbus
ENV LOG_FORMAT=json PYTHONUNBUFFERED=1
CMD ["python", "-m", "services.gateway"]
