# criu-rs: build and install libcriu.so.2 (a drop-in for CRIU's), its header and pkg-config
# file, and the criu command; test the installed C library.
#
#   make demo                        checkpoint a running program and restore it
#   make test                        every check CI runs: fmt, clippy, Rust tests, C tests
#   make bench                       throughput against this machine's limits
#   make install PREFIX=/some/dir    (DESTDIR is honoured for packaging)
#   make ctests                      (installs into a scratch prefix, builds and runs ctests/)

PREFIX     ?= /usr/local
override PREFIX := $(abspath $(PREFIX))
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
SBINDIR    ?= $(PREFIX)/sbin

CARGO            ?= cargo
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
RELEASE := $(CARGO_TARGET_DIR)/release

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# What a static link against libcriu.a needs besides it (`rustc --print native-static-libs`).
STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

.PHONY: all release install ctests header-check clean demo test crit bench

all: release

release:
	$(CARGO) build --release --lib --bins

install: release
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/criu $(DESTDIR)$(SBINDIR)
	install -m 755 $(RELEASE)/libcriu.so $(DESTDIR)$(LIBDIR)/libcriu.so.2
	ln -sfn libcriu.so.2 $(DESTDIR)$(LIBDIR)/libcriu.so
	install -m 644 $(RELEASE)/libcriu.a $(DESTDIR)$(LIBDIR)/libcriu.a
	install -m 644 include/criu.h $(DESTDIR)$(INCLUDEDIR)/criu/criu.h
	sed -e 's,@libdir@,$(LIBDIR),' -e 's,@includedir@,$(INCLUDEDIR),g' \
	    -e 's,@version@,$(VERSION),' -e 's,@static_libs@,$(STATIC_LIBS),' \
	    pkgconfig/criu.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/criu.pc
	install -m 755 $(RELEASE)/criu $(DESTDIR)$(SBINDIR)/criu

# The C tests run against a scratch install; criu_set_service_binary gets its criu by path.
CTEST_PREFIX ?= $(CURDIR)/out/ctest-prefix
SWRK_BIN     ?= $(CTEST_PREFIX)/sbin/criu

ctests:
	$(MAKE) install PREFIX=$(CTEST_PREFIX) DESTDIR=
	$(MAKE) -C ctests clean
	$(MAKE) -C ctests run PREFIX=$(CTEST_PREFIX) SWRK_BIN=$(SWRK_BIN)

# build.rs regenerates include/criu.h; the committed copy must be what it generates.
header-check:
	$(CARGO) build --lib
	git diff --exit-code -- include/criu.h

demo:
	$(CARGO) build --release --bin criu
	CRIU=$(RELEASE)/criu ./scripts/demo.sh

bench:
	$(CARGO) build --release --bin criu --example bench
	$(RELEASE)/examples/bench

# Debian's crit, to prove our images are CRIU images (tests/crit_images.rs).
crit:
	./scripts/get-crit.sh

test: crit
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test
	$(MAKE) header-check
	$(MAKE) ctests

clean:
	$(CARGO) clean
	$(MAKE) -C ctests clean
	rm -rf out
