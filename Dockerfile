# pmmap in a container: a fully static binary (make static, static/build.sh)
# on an empty base with only a CA bundle, a non-root user and /tmp.
#
#   docker build -t pmmap .
#   docker run --rm -p 8080:8080 pmmap
#
# Flags come from the environment (PMMAP_*) or after the image name, e.g.
# `docker run pmmap --max-jobs 100`. Job data lives under $TMPDIR (/tmp)
# unless --data-dir / PMMAP_DATA_DIR points at a mounted volume.

FROM debian:bookworm AS build
# static/build.sh installs whatever of these is missing itself; listing them
# here keeps them in a cached layer. The apt lists stay: `apt-get source`
# needs them (build.sh adds a deb-src entry and runs apt-get update).
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      ca-certificates dpkg-dev g++ make libssl-dev libc-ares-dev rapidjson-dev
WORKDIR /src
COPY . .
RUN make static
# The final image's whole file tree.
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp \
 && chmod 1777 /rootfs/tmp \
 && install -m 755 pmmap-static /rootfs/pmmap \
 && install -m 644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\npmmap:x:65532:65532:pmmap:/nonexistent:/sbin/nologin\n' \
      >/rootfs/etc/passwd \
 && printf 'root:x:0:\npmmap:x:65532:\n' >/rootfs/etc/group \
 && chmod 644 /rootfs/etc/passwd /rootfs/etc/group

FROM scratch
# No /etc/hosts, /etc/resolv.conf or NSS modules: the runtime provides the
# first two, and pmmap resolves names with c-ares, which reads them directly.
COPY --from=build /rootfs/ /
USER 65532:65532
ENV PMMAP_LISTEN=0.0.0.0:8080 TMPDIR=/tmp
EXPOSE 8080
ENTRYPOINT ["/pmmap"]
