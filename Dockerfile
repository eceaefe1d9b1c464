# pmmap in a container: a fully static binary (make static, static/build.sh),
# stripped, on an empty base with only a CA bundle, a non-root user, /tmp and
# the /data volume.
#
#   docker build -t pmmap .
#   docker run -v pmmap-data:/data -p 8080:8080 pmmap
#
# Flags come from the environment (PMMAP_*) or after the image name, e.g.
# `docker run pmmap --max-jobs 100`. Job data lives in the /data volume
# (PMMAP_DATA_DIR), which must be writable by uid 65532: a named volume is,
# as it starts as a copy of the image's /data; pmmap refuses to start on one
# it cannot write. `make image-test` builds this image and runs a job
# through it (test/image_test.sh).

FROM debian:bookworm AS build
# static/build.sh installs whatever of these is missing itself; listing them
# here keeps them in a cached layer. The apt lists stay: `apt-get source`
# needs them (build.sh adds a deb-src entry and runs apt-get update).
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      ca-certificates dpkg-dev g++ make libssl-dev libc-ares-dev rapidjson-dev
WORKDIR /src
# The static dependencies (libcurl, httplib.h) in a layer of their own, which
# only a change to static/build.sh invalidates: a change to pmmap's sources
# recompiles pmmap alone, not libcurl.
COPY static/build.sh static/build.sh
RUN static/build.sh --deps-only
COPY . .
RUN make static
# The final image's whole file tree. The binary is stripped here only: the
# pmmap-static of `make static` keeps its symbols, for debugging.
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp /rootfs/data \
 && chmod 1777 /rootfs/tmp \
 && chown 65532:65532 /rootfs/data && chmod 700 /rootfs/data \
 && install -s -m 755 pmmap-static /rootfs/pmmap \
 && install -m 644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\npmmap:x:65532:65532:pmmap:/nonexistent:/sbin/nologin\n' \
      >/rootfs/etc/passwd \
 && printf 'root:x:0:\npmmap:x:65532:\n' >/rootfs/etc/group \
 && chmod 644 /rootfs/etc/passwd /rootfs/etc/group

FROM scratch
# No /etc/hosts, /etc/resolv.conf or NSS modules: the runtime provides the
# first two, and pmmap resolves names with c-ares, which reads them directly.
# COPY --from keeps the owners set above (/data's is 65532).
COPY --from=build /rootfs/ /
USER 65532:65532
ENV PMMAP_LISTEN=0.0.0.0:8080 PMMAP_DATA_DIR=/data TMPDIR=/tmp
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/pmmap"]
