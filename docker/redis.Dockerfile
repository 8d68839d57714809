# Redis from Debian bookworm on the local base, started like the official image.
ARG BASE_IMAGE=chatbus-base:bookworm
FROM ${BASE_IMAGE}
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
VOLUME /data
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
