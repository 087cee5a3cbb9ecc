# nbdring: run `make` for the list of targets.

GO        ?= go
# giouring reaches syscall.mmap/munmap through go:linkname, which Go >= 1.23
# refuses at link time unless told otherwise. This is the one place that says
# so; every build and test below goes through it.
LINKFLAGS := -ldflags=-checklinkname=0
BIN       := bin
IMAGE     ?= var/default.img
IMAGE_SIZE?= 1G
LISTEN    ?= localhost:10809
FUZZTIME  ?= 30s
# Packages with fuzz targets: wire's decoders and engine's FuzzShard.
FUZZ_PKGS ?= ./wire/ ./engine/
# make compare: the side-by-side table (README "Performance"). BENCH_FILE is
# any file or block device (e.g. /dev/zram0); one that exists is used as it
# is, a missing file is made and filled with BENCH_SIZE of random data.
BENCH_FILE?= var/bench.img
BENCH_SIZE?= 1G
CLIENT    ?= nbdbench
# TLS_CERTS=DIR: every server requires TLS with that certificate directory
# (ca-cert.pem, server-cert.pem, server-key.pem; client-cert.pem and
# client-key.pem for the client) and the client connects with nbds+unix://.
TLS_CERTS ?=
# Pin the servers and the client (taskset CPU lists); empty: unpinned.
SERVER_CPUS ?=
CLIENT_CPUS ?=
SERVERS   ?= nbdring,qemu-nbd,nbdkit,nbd-server
WORKLOADS ?= randread:4k:32:1,randread:4k:32:2,randwrite:4k:32:1,randwrite:4k:32:2,read:1M:8:1,write:1M:8:1
DURATION  ?= 5s
ROUNDS    ?= 3
# make soak: verified load against a real nbdring for SOAK_DURATION. The
# compare target owns DURATION; `make soak DURATION=1h` works too, since a
# DURATION given on the command line is taken for the soak.
SOAK_DURATION ?= $(if $(filter command line,$(origin DURATION)),$(DURATION),60s)
# make install: where the binaries and the systemd units go. DESTDIR is
# prepended to every path (staged installs, packages); the units name
# $(BINDIR)/nbdring without it.
PREFIX    ?= /usr/local
DESTDIR   ?=
BINDIR    ?= $(PREFIX)/bin
UNITDIR   ?= $(PREFIX)/lib/systemd/system
DOCDIR    ?= $(PREFIX)/share/doc/nbdring
# Debian packages the end-to-end tests drive (real clients nobody here wrote);
# systemd brings systemd-socket-activate and systemd-analyze;
# python3-prometheus-client parses /metrics as Prometheus would; gnutls-bin
# (certtool) and openssl make the TLS tests' certificates; mount brings
# losetup, kmod modprobe.
TEST_DEBS := libnbd-bin python3-libnbd qemu-utils nbdkit nbd-server fio systemd \
             python3-prometheus-client gnutls-bin openssl mount kmod
TEST_CMDS := nbdinfo nbdsh nbdcopy qemu-img qemu-io qemu-nbd nbdkit fio \
             systemd-socket-activate systemd-analyze certtool openssl losetup
# Kernel modules the durability and fault tests use: zram and loop devices,
# and FUSE for tools/faultfs (which mounts with mount(2): no fusermount).
# Each is checked by the file it provides.
TEST_MODULES := zram:/sys/class/zram-control loop:/dev/loop-control fuse:/dev/fuse

.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/nbdring and bin/nbdbench
	$(GO) build $(LINKFLAGS) -o $(BIN)/nbdring ./cmd/nbdring
	$(GO) build $(LINKFLAGS) -o $(BIN)/nbdbench ./cmd/nbdbench

install: build ## install nbdring, nbdbench and the systemd units under $(DESTDIR)$(PREFIX)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BIN)/nbdring $(BIN)/nbdbench $(DESTDIR)$(BINDIR)/
	sed 's|/usr/local/bin/nbdring|$(BINDIR)/nbdring|' service/nbdring.service \
	    > $(DESTDIR)$(UNITDIR)/nbdring.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nbdring.service
	install -m 0644 service/nbdring.socket $(DESTDIR)$(UNITDIR)/
	install -m 0644 service/nbdring.env service/nbdring.toml $(DESTDIR)$(DOCDIR)/
	@echo "installed; configure /etc/default/nbdring (example: $(DOCDIR)/nbdring.env)," \
	      "then: systemctl daemon-reload && systemctl enable --now nbdring.socket"

uninstall: ## remove what install put under $(DESTDIR)$(PREFIX)
	rm -f $(DESTDIR)$(BINDIR)/nbdring $(DESTDIR)$(BINDIR)/nbdbench \
	      $(DESTDIR)$(UNITDIR)/nbdring.service $(DESTDIR)$(UNITDIR)/nbdring.socket \
	      $(DESTDIR)$(DOCDIR)/nbdring.env $(DESTDIR)$(DOCDIR)/nbdring.toml
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null

$(IMAGE):
	mkdir -p $(dir $(IMAGE))
	truncate -s $(IMAGE_SIZE) $(IMAGE)

run: build $(IMAGE) ## serve var/default.img (sparse, 1 GiB, made if missing) on localhost:10809
	@echo "serving $(IMAGE) on $(LISTEN); connect with: nbdinfo nbd://$(LISTEN)" \
	      "  or: qemu-img info nbd://$(LISTEN)"
	exec $(BIN)/nbdring -listen $(LISTEN) $(IMAGE)

deps: ## install the Debian packages the tests use, when missing
	@missing=""; for c in $(TEST_CMDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	/usr/bin/python3 -c 'import nbd' 2>/dev/null || missing="$$missing python3-nbd"; \
	/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || \
	  missing="$$missing python3-prometheus-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing test clients (missing:$$missing)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(TEST_DEBS) >/dev/null; \
	fi; \
	for m in $(TEST_MODULES); do \
	  [ -e "$${m#*:}" ] && continue; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "loading kernel module $${m%%:*} (for $${m#*:})"; \
	  $$SUDO modprobe "$${m%%:*}" || echo "modprobe $${m%%:*} failed: its tests will skip" \
	    "(or fail under NBDRING_REQUIRE)"; \
	done

test: deps lint ## install test clients if needed, then run every test (invariants on)
	$(GO) build $(LINKFLAGS) -tags invariants -o $(BIN)/nbdring-invariants ./cmd/nbdring
	NBDRING_BIN=$(CURDIR)/$(BIN)/nbdring-invariants \
	  $(GO) test $(LINKFLAGS) -tags invariants -count=1 -timeout 20m ./...

soak: deps ## verified mixed load for SOAK_DURATION (60s); fails on RSS, fd or goroutine growth
	$(GO) build $(LINKFLAGS) -tags invariants -o $(BIN)/nbdring-invariants ./cmd/nbdring
	NBDRING_SOAK=$(SOAK_DURATION) NBDRING_BIN=$(CURDIR)/$(BIN)/nbdring-invariants \
	  $(GO) test $(LINKFLAGS) -tags invariants -count=1 -timeout 0 -v -run '^TestSoak$$' \
	  ./cmd/nbdring/

race: ## unit tests under the race detector
	$(GO) test $(LINKFLAGS) -race -count=1 ./wire/ ./ring/ ./engine/

fuzz: ## run each fuzz target of $(FUZZ_PKGS) for $(FUZZTIME), invariants on
	@for p in $(FUZZ_PKGS); do \
	  for t in $$($(GO) test $(LINKFLAGS) -tags invariants -list 'Fuzz.*' $$p | grep ^Fuzz); do \
	    $(GO) test $(LINKFLAGS) -tags invariants -run '^$$' -fuzz "^$$t$$" \
	      -fuzztime $(FUZZTIME) $$p || exit 1; \
	  done; \
	done

bench: ## Go micro-benchmarks of wire and the request path, with allocations
	$(GO) test $(LINKFLAGS) -run '^$$' -bench . -benchmem ./wire/ ./engine/

# Only a missing BENCH_FILE gets here (make leaves an existing file or
# device alone); a device node is never made: writing it would fill /dev.
$(BENCH_FILE):
	@case '$(BENCH_FILE)' in /dev/*) echo "$(BENCH_FILE) does not exist: set the device" \
	  "up first (README, Performance: a zram device), or give a file"; exit 1;; esac
	mkdir -p $(dir $(BENCH_FILE))
	fio --name=fill --filename=$(BENCH_FILE) --size=$(BENCH_SIZE) --rw=write --bs=1M \
	    --direct=1 --refill_buffers --output=/dev/null

compare: build deps $(BENCH_FILE) ## nbdring vs qemu-nbd, nbdkit, nbd-server (table, var/compare.svg); BENCH_FILE, CLIENT=fio, TLS_CERTS=DIR
	mkdir -p var
	$(BIN)/nbdbench compare -file $(BENCH_FILE) -servers $(SERVERS) -workloads $(WORKLOADS) \
	    -duration $(DURATION) -rounds $(ROUNDS) -client $(CLIENT) -svg var/compare.svg \
	    $(if $(SERVER_CPUS),-server-cpus $(SERVER_CPUS)) $(if $(CLIENT_CPUS),-client-cpus $(CLIENT_CPUS)) \
	    $(if $(TLS_CERTS),-tls-certificates $(TLS_CERTS))

# make scale: compare once per core count in CORES, each server on the
# first N CPUs (nbdring with -shards N), the client on the rest (or on
# CLIENT_CPUS), with the floor (nbdbench floor: the bare pread/write loop)
# as a pseudo-server; one table per count, var/scale-coresN.svg each.
# Default: those of 1,4,8 that leave the client a CPU (1 on 2 CPUs).
CORES     ?= $(shell n=$$(nproc); s=; for c in 1 4 8; do [ $$c -lt $$n ] && s=$$s$${s:+,}$$c; \
               done; echo $${s:-1})
SCALE_SERVERS   ?= nbdring,nbdkit,qemu-nbd,floor
SCALE_WORKLOADS ?= read:1M:8:1,write:1M:8:1,randread:4k:32:1

scale: build deps $(BENCH_FILE) ## compare per core count (CORES=1,4,8) with the floor; a table each
	mkdir -p var
	$(BIN)/nbdbench compare -file $(BENCH_FILE) -servers $(SCALE_SERVERS) \
	    -workloads $(SCALE_WORKLOADS) -duration $(DURATION) -rounds $(ROUNDS) \
	    -client $(CLIENT) -cores $(CORES) -svg var/scale.svg \
	    $(if $(CLIENT_CPUS),-client-cpus $(CLIENT_CPUS))

realclients: build $(BENCH_FILE) ## nbdcopy and qemu-img convert wall times per server; 1M reads vs iperf3 loopback
	bench/realclients.sh -f $(BENCH_FILE) -r $(ROUNDS) -s $(or $(SERVER_CPUS),0) -c $(or $(CLIENT_CPUS),1)

# make profile: CPU profile of nbdring under load (tools/nbdprof). The load runs
# 5 s longer than the capture so it covers the warm-up and the whole profile.
PROFILE_SECONDS ?= 10
PROFILE_DIR     ?= var/profile
PROFILE_BASE    ?=
PROFILE_LOAD    ?=

profile: build deps $(BENCH_FILE) ## CPU profile under nbdbench load: top, syscall share; PROFILE_BASE=old.pb.gz diffs
	$(GO) build $(LINKFLAGS) -o $(BIN)/nbdprof ./tools/nbdprof
	@load='$(PROFILE_LOAD)'; secs=$$(($(PROFILE_SECONDS) + 5)); \
	if [ -z "$$load" ]; then \
	  load="$(BIN)/nbdbench run -uri {uri} -rw randread -bs 4k -qd 32 -duration $${secs}s"; \
	fi; \
	set -x; $(BIN)/nbdprof session -server $(BIN)/nbdring -image $(BENCH_FILE) \
	  -seconds $(PROFILE_SECONDS) -o $(PROFILE_DIR) -load "$$load" \
	  $(if $(PROFILE_BASE),-base $(PROFILE_BASE))

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...

clean: ## remove binaries (not the default image)
	rm -rf $(BIN)

.PHONY: help build install uninstall run deps test soak race fuzz bench compare scale realclients profile lint clean
