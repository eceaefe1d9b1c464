#!/usr/bin/env bash
# Builds pmmap-static in the repository root: a fully static x86-64 pmmap
# made only from Debian 12 packages and Debian source packages.
#
#   - libcurl 7.88.1 from Debian's curl source package, built static with
#     only http and https, OpenSSL (Debian's libssl.a/libcrypto.a) and
#     c-ares (Debian's libcares.a), so that names resolve from /etc/hosts
#     and /etc/resolv.conf without glibc's NSS modules (a FROM scratch
#     container has none);
#   - cpp-httplib's full single header from its Debian source package
#     (Debian's libcpp-httplib-dev is a shared library whose httplib.h only
#     declares), compiled header-only without its OpenSSL/zlib/brotli parts;
#   - everything linked with -static against Debian's glibc 2.36 (since 2.34
#     libpthread lives in libc, so -pthread needs no --whole-archive).
#
# Everything is cached under build/static/ (PMMAP_STATIC_CACHE overrides):
# a second run only recompiles what changed. `static/build.sh --deps-only`
# stops once libcurl and httplib.h are ready, before pmmap's own sources
# (which it needs none of): the Dockerfile builds them in a layer of their own. Installs the Debian packages it
# needs (as root, or with sudo) and, when `apt-get source` is not possible,
# adds a deb-src entry for bookworm and runs apt-get update.
set -euo pipefail

DEPS_ONLY=false
case ${1:-} in
  --deps-only) DEPS_ONLY=true ;;
  "") ;;
  *) echo "usage: static/build.sh [--deps-only]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PMMAP_STATIC_CACHE:-$ROOT/build/static}
OUT=${PMMAP_STATIC_OUT:-$ROOT/pmmap-static}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
CXX=${CXX:-g++}
CC=${CC:-gcc}
# Run from `make static`, this script is a build of its own: no jobserver or
# flags of the calling make leak into the makes below.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES GNUMAKEFLAGS

# Build dependencies (Debian 12 package names).
PACKAGES=(g++ make dpkg-dev libssl-dev libc-ares-dev rapidjson-dev ca-certificates)
DEBSRC_FILE=/etc/apt/sources.list.d/pmmap-debsrc.sources
CURL_UPSTREAM=7.88.1

# Where libcurl looks for CA certificates when pmmap gives no --ca-file.
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CA_PATH=/etc/ssl/certs

# Only http and https; every other protocol and optional library is off.
CURL_CONFIGURE=(
  --disable-shared --enable-static --disable-dependency-tracking
  --disable-silent-rules
  --with-openssl --enable-ares --without-zlib
  --with-ca-bundle="$CA_BUNDLE" --with-ca-path="$CA_PATH" --without-ca-fallback
  --enable-http --disable-ftp --disable-file --disable-ldap --disable-ldaps
  --disable-rtsp --disable-dict --disable-telnet --disable-tftp --disable-pop3
  --disable-imap --disable-smtp --disable-gopher --disable-mqtt --disable-smb
  --disable-manual --disable-ntlm --disable-ntlm-wb --disable-kerberos-auth
  --disable-negotiate-auth --disable-libcurl-option --disable-sspi --disable-netrc
  --without-libidn2 --without-libpsl --without-nghttp2 --without-nghttp3
  --without-ngtcp2 --without-quiche --without-msh3 --without-brotli
  --without-zstd --without-libssh --without-libssh2 --without-wolfssh
  --without-gssapi --without-librtmp --without-libgsasl --without-hyper
  --without-gnutls --without-nss --without-wolfssl --without-mbedtls
  --without-bearssl --without-rustls --without-schannel --without-secure-transport
  --without-amissl
)
# Debian's hardening flags, as its own libcurl build uses them.
CURL_CFLAGS="-O2 -fstack-protector-strong -Wformat -Werror=format-security"
CURL_CPPFLAGS="-D_FORTIFY_SOURCE=2"

# pmmap itself: httplib header-only, no CPPHTTPLIB_* support macros.
PMMAP_CXXFLAGS="-std=c++17 -O2 -pthread -Wall -Wextra -DRAPIDJSON_SSE2"  # x86-64 only, like the Makefile

log() { printf 'static/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# Prints the .dsc file name `apt-get source PKG` would fetch (from an empty
# directory, since apt skips files already in the current one); empty when
# apt knows no source for it.
source_dsc() {
  local empty
  empty=$(mktemp -d)
  (cd "$empty" && apt-get source --print-uris -qq "$1" 2>/dev/null) |
    awk -v p="$1" '$2 ~ "^" p "_.*\\.dsc$" { print $2; exit }' || true
  rmdir "$empty"
}

# Makes `apt-get source` possible: a deb-src entry for bookworm if there is
# none, then apt-get update.
enable_deb_src() {
  if ! grep -rqsE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' \
      /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding $DEBSRC_FILE"
    as_root tee "$DEBSRC_FILE" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  as_root apt-get update -q
}

# Unpacks Debian's source package PKG (patches applied) into
# $CACHE/src/PKG/ unless the same version is already there. Prints its
# source tree's path.
fetch_source() {
  local pkg=$1 dest=$CACHE/src/$1 dsc tree
  dsc=$(source_dsc "$pkg")
  if [[ -z $dsc ]]; then
    if [[ -f $dest/.fetched ]]; then
      log "apt knows no source for $pkg now; using the cached $(cat "$dest/.fetched")"
    else
      enable_deb_src >&2
      dsc=$(source_dsc "$pkg")
      [[ -n $dsc ]] || die "apt-get source $pkg is still not possible"
    fi
  fi
  if [[ -n $dsc && ! ( -f $dest/.fetched && $(cat "$dest/.fetched") == "$dsc" ) ]]; then
    log "fetching source package $dsc"
    rm -rf "$dest"
    mkdir -p "$dest"
    (cd "$dest" && apt-get source -q "$pkg") >&2 || die "apt-get source $pkg failed"
    echo "$dsc" >"$dest/.fetched"
  fi
  tree=$(find "$dest" -mindepth 1 -maxdepth 1 -type d -name "$pkg-*" | head -n1)
  [[ -n $tree ]] || die "no unpacked $pkg tree in $dest"
  echo "$tree"
}

# Writes FILE with CONTENT only when it differs, so make sees a change only
# when there is one.
write_if_changed() {
  if [[ ! -f $1 || $(cat "$1") != "$2" ]]; then printf '%s\n' "$2" >"$1"; fi
}

start=$SECONDS
mkdir -p "$CACHE/src"
install_packages

# 1. Sources.
CURL_SRC=$(fetch_source curl)
HTTPLIB_SRC=$(fetch_source cpp-httplib)
CURL_DSC=$(cat "$CACHE/src/curl/.fetched")
case $(basename "$CURL_SRC") in
  curl-"$CURL_UPSTREAM") ;;
  *) log "warning: expected curl $CURL_UPSTREAM, Debian's source is $(basename "$CURL_SRC")" ;;
esac

mkdir -p "$CACHE/include"
if ! cmp -s "$HTTPLIB_SRC/httplib.h" "$CACHE/include/httplib.h"; then
  cp "$HTTPLIB_SRC/httplib.h" "$CACHE/include/httplib.h"
fi
grep -q '^#define CPPHTTPLIB_VERSION' "$CACHE/include/httplib.h" ||
  die "$HTTPLIB_SRC/httplib.h is not the full single header"

# 2. libcurl (static). Debian's patches to configure.ac and Makefile.am
# concern other flavours (GnuTLS, NSS), Kerberos, LDAP and tests; curl's
# AM_MAINTAINER_MODE keeps them from re-running autotools, so the shipped
# configure is used as it is, and every patch to the C sources applies.
PREFIX=$CACHE/curl
CURL_KEY="$CURL_DSC|$CC|$CURL_CFLAGS|$CURL_CPPFLAGS|${CURL_CONFIGURE[*]}"
if [[ ! -f $PREFIX/.built || $(cat "$PREFIX/.built") != "$CURL_KEY" ]]; then
  log "building libcurl from $CURL_DSC (make -j$JOBS)"
  curl_start=$SECONDS
  rm -rf "$PREFIX" "$CACHE/curl-build"
  mkdir -p "$CACHE/curl-build"
  (
    cd "$CACHE/curl-build"
    "$CURL_SRC/configure" --prefix="$PREFIX" "${CURL_CONFIGURE[@]}" \
      CC="$CC" CFLAGS="$CURL_CFLAGS" CPPFLAGS="$CURL_CPPFLAGS" >configure.log 2>&1 ||
      { tail -n 40 configure.log; tail -n 60 config.log; exit 1; }
    make -j"$JOBS" -C lib >make.log 2>&1 || { tail -n 60 make.log; exit 1; }
    make -C lib install >>make.log 2>&1 && make -C include install >>make.log 2>&1 &&
      install -D -m 755 curl-config "$PREFIX/bin/curl-config" ||
      { tail -n 60 make.log; exit 1; }
    # Show that only what we asked for is in.
    grep -E '^ *(SSL|resolver|Protocols|ca cert bundle|ca cert path|ca fallback):' configure.log >&2 || true
  ) || die "libcurl build failed (logs in $CACHE/curl-build)"
  echo "$CURL_KEY" >"$PREFIX/.built"
  log "libcurl built in $((SECONDS - curl_start))s"
fi
if $DEPS_ONLY; then
  log "dependencies ready in $CACHE in $((SECONDS - start))s"
  exit 0
fi

# Debian's curl-config omits -L, so name our libcurl.a by path (a bare
# -lcurl would find Debian's, which needs Kerberos, LDAP and more).
CURL_LIBS="$PREFIX/lib/libcurl.a"
for flag in $("$PREFIX/bin/curl-config" --static-libs); do
  case $flag in -lcurl | -Wl,-Bstatic | -Wl,-Bdynamic) ;; *) CURL_LIBS+=" $flag" ;; esac
done

# 3. pmmap: its SERVER_SOURCES and LIB_SOURCES come from the Makefile, so the lists agree,
# and the page's generated source (PAGE_SOURCE, under build/), which the Makefile makes first.
SOURCES=$(make -s --no-print-directory -C "$ROOT" -f Makefile -f - pmmap-static-print-sources <<'EOF'
pmmap-static-print-sources: $(PAGE_SOURCE)
	@echo $(SERVER_SOURCES) $(LIB_SOURCES) $(PAGE_SOURCE)
EOF
) || die "cannot read LIB_SOURCES from the Makefile"
for src in $SOURCES; do
  [[ $src == *.cpp && -f $ROOT/$src ]] || die "bad LIB_SOURCES from the Makefile: $SOURCES"
done

OBJ=$CACHE/obj
mkdir -p "$OBJ"
# Debian's static libraries: an upgraded package (a security fix) relinks.
SYSTEM_LIBS=""
for lib in libssl.a libcrypto.a libcares.a libc.a libstdc++.a; do
  path=$("$CXX" -print-file-name="$lib")
  [[ -f $path ]] || die "$lib not found (is its -dev package installed?)"
  SYSTEM_LIBS+=" $path"
done
write_if_changed "$OBJ/build-key" "$CXX $PMMAP_CXXFLAGS $CURL_LIBS $CURL_KEY $(cat "$CACHE/src/cpp-httplib/.fetched")"
# ld warns that getaddrinfo, gethostbyname, getservbyname, getservbyport_r
# and dlopen "require at runtime the shared libraries from the glibc version
# used for linking". None are on pmmap's paths but one: webhook names go
# through c-ares (curl passes the port as a number, so no getservbyname);
# libcrypto's dlopen serves only engines/providers named in an openssl.cnf
# and BIO_gethostbyname is unused. The one: httplib binds --listen's host
# with getaddrinfo, which a static glibc 2.36 answers without NSS modules
# for a numeric address, and for a name listed in /etc/hosts.
cat >"$OBJ/rules.mk" <<EOF
# Generated by static/build.sh.
ROOT := $ROOT
OBJ := $OBJ
OUT := $OUT
SOURCES := $SOURCES
OBJECTS := \$(SOURCES:%.cpp=\$(OBJ)/%.o)
CXX := $CXX
FLAGS := $PMMAP_CXXFLAGS -MMD -MP -isystem $CACHE/include -isystem $PREFIX/include -I\$(ROOT)

\$(OUT): \$(OBJECTS) $PREFIX/lib/libcurl.a$SYSTEM_LIBS \$(OBJ)/build-key
	\$(CXX) -static -pthread -O2 \$(OBJECTS) -o \$@.tmp $CURL_LIBS
	mv \$@.tmp \$@
	@echo "static/build.sh: ld's warnings of functions that need glibc's shared libraries are expected (see static/build.sh)"

\$(OBJ)/%.o: \$(ROOT)/%.cpp \$(OBJ)/build-key
	@mkdir -p \$(dir \$@)
	\$(CXX) \$(FLAGS) -c \$< -o \$@

-include \$(wildcard \$(OBJ)/*.d)
EOF
# No built-in rules (-r): with them, make "remade" a prerequisite named like a
# source (the stamp was once $OBJ/flags, beside flags.o) by linking its .o.
make --no-print-directory -r -j"$JOBS" -f "$OBJ/rules.mk" "$OUT" || die "building $OUT failed"

# 4. Check: no program interpreter, no dynamic section.
if readelf -lW "$OUT" | grep -qE 'INTERP|DYNAMIC'; then
  die "$OUT is not fully static"
fi
log "ldd: $(ldd "$OUT" 2>&1 | sed 's/^[[:space:]]*//' || true)"
command -v file >/dev/null && log "file: $(file -b "$OUT")"
log "built $OUT ($(stat -c %s "$OUT") bytes) in $((SECONDS - start))s"
