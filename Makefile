# runcast: plain make + pkg-config. `make run`, `make test`, `make asan`.
PKGS      := libuv libcurl jansson libjwt libcrypto hiredis liburing
BUILD     ?= build
CC        ?= cc
OPT       ?= -O2
SAN       ?=
# CFLAGS and LDLIBS are expanded when a recipe runs (=, not :=), so that on a
# fresh machine they see the packages scripts/bootstrap has just installed.
CFLAGS     = -std=c11 -D_GNU_SOURCE -g $(OPT) $(SAN) -Wall -Wextra -Werror \
             -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(EXTRA_CFLAGS)
LDFLAGS   += $(SAN)
LDLIBS     = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm

# The demo agent lives in src/demo/ (its objects in $(BUILD)/demo/, apart
# from core objects of the same name).
SRC       := $(wildcard src/*.c src/demo/*.c)
HDR       := $(wildcard src/*.h src/demo/*.h)
LIB_OBJ   := $(patsubst src/%.c,$(BUILD)/%.o,$(filter-out src/main.c,$(SRC)))
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
# The console (web/*) is embedded into the binary: scripts/embed-web turns the
# files into $(BUILD)/web_assets.c (generated, never committed). web.list
# holds the file names, so adding or removing a file regenerates it too.
WEB       := $(sort $(wildcard web/*))
WEB_C     := $(BUILD)/web_assets.c
LIB_OBJ   += $(BUILD)/web_assets.o
# Helpers the integration tests run (jwt-mint makes tokens with libjwt).
TOOLS     := $(BUILD)/tests/jwt-mint

.PHONY: all bootstrap run run-cluster test test-cluster test-redis-mode test-run-cluster unit integration e2e screenshot asan clean
all: $(BUILD)/runcast $(UNIT_BIN) $(TOOLS)

bootstrap:
	@scripts/bootstrap

$(BUILD)/.bootstrapped: scripts/bootstrap
	@scripts/bootstrap
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/%.o: src/%.c $(HDR) $(BUILD)/.bootstrapped
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/web.list: FORCE
	@mkdir -p $(dir $@)
	@echo '$(WEB)' | cmp -s - $@ || echo '$(WEB)' > $@

$(WEB_C): $(WEB) scripts/embed-web $(BUILD)/web.list $(BUILD)/.bootstrapped
	scripts/embed-web $@ $(WEB)

$(BUILD)/web_assets.o: $(WEB_C) src/console.h src/common.h src/http.h
	$(CC) $(CFLAGS) -Isrc -c -o $@ $<

$(BUILD)/libruncast.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/runcast: $(BUILD)/main.o $(BUILD)/libruncast.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/test.h $(BUILD)/libruncast.a $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc -o $@ $< $(BUILD)/libruncast.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/tests/jwt-mint: tests/tools/jwt-mint.c $(BUILD)/.bootstrapped
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(LDLIBS)

run: $(BUILD)/runcast
	@echo "runcast on http://127.0.0.1:8000 with the built-in demo agent."
	@echo "Console: open http://127.0.0.1:8000/ in a browser. Or try, in another terminal:"
	@echo "  curl -N localhost:8000/apps/demo/users/alice/sessions/s1/run &"
	@echo "  curl -s -X POST localhost:8000/apps/demo/users/alice/sessions/s1/run -H 'Content-Type: application/json' -d '{\"message\": \"hello there\"}'"
	@echo "  curl -s localhost:8000/task-status"
	@echo "Stop with Ctrl-C."
	$(BUILD)/runcast --listen 127.0.0.1:8000 --upstream demo

# Cluster mode on this machine: a private redis-server, three nodes and a
# private nginx on 127.0.0.1:8000 in front of them (README, "Cluster mode").
# Ports, directory and binaries: see scripts/run-cluster's header.
run-cluster: $(BUILD)/runcast
	@RUNCAST_BIN=$(BUILD)/runcast RUN_CLUSTER_DIR="$${RUN_CLUSTER_DIR:-$(BUILD)/cluster}" scripts/run-cluster

# scripts/run-cluster's own tests (tests/cluster/test_run_cluster.py): it
# starts, serves one session through nginx from three nodes, stops with
# nothing left behind. They need a cluster-capable binary (--store).
test-run-cluster: $(BUILD)/runcast
	@RUNCAST_BIN=$${RUNCAST_BIN:-$(BUILD)/runcast} timeout -k 5 600 python3 tests/cluster/test_run_cluster.py

# Every test: unit binaries, the integration suite against the real binary,
# then the console's browser tests (tests/e2e: installs chromium and
# playwright-core itself when they are missing).
test: all
	@RUNCAST_BIN=$(BUILD)/runcast UNIT_BINS="$(UNIT_BIN)" scripts/run-tests

# Only the browser tests (E2E_FILTER: a test name pattern for node --test).
E2E_FILTER ?=
e2e: $(BUILD)/runcast
	@RUNCAST_BIN=$(BUILD)/runcast UNIT_BINS= scripts/run-tests --e2e-only $(E2E_FILTER)

# Retakes docs/console.png (the README's screenshot) with the browser test
# that lays out the console at laptop width.
screenshot: $(BUILD)/runcast
	@E2E_DOCS_SCREENSHOT=1 RUNCAST_BIN=$(BUILD)/runcast UNIT_BINS= scripts/run-tests --e2e-only 'laptop width'

# The cluster-mode fault tests (tests/cluster/): private redis-servers and
# several nodes on loopback ports; RUNCAST_BIN overrides the binary,
# CLUSTER_FILTER picks tests by name, RUNCAST_CLUSTER_SEED replays the
# randomized one.
CLUSTER_FILTER ?=
test-cluster: $(BUILD)/runcast
	@RUNCAST_BIN=$${RUNCAST_BIN:-$(BUILD)/runcast} timeout -k 5 600 python3 tests/cluster/run.py $(CLUSTER_FILTER)
	@$(MAKE) --no-print-directory test-redis-mode

# The integration suite again, every daemon with --store redis:// on a
# private redis-server (RUNCAST_TEST_STORE=redis): the API, the events and
# their order hold in cluster mode too. Tests of memory mode alone are
# listed with the reason (@test(memory_only=...)).
test-redis-mode: $(BUILD)/runcast
	@RUNCAST_TEST_STORE=redis RUNCAST_BIN=$${RUNCAST_BIN:-$(BUILD)/runcast} timeout -k 5 900 python3 tests/integration/run.py

unit: all
	@RUNCAST_BIN=$(BUILD)/runcast UNIT_BINS="$(UNIT_BIN)" scripts/run-tests --unit-only

# The stream tests of the integration suite again on the sendmsg fallback
# (RUNCAST_IO_URING=0), so CI covers both send paths (README, Decisions);
# test_server's unit tests run each send-batch case on both by themselves.
STREAM_TESTS = $(shell sed -n 's/^def \(test_[a-z0-9_]*\).*/\1/p' tests/integration/test_streams.py)
.PHONY: test-sendmsg
test-sendmsg: $(BUILD)/runcast
	@RUNCAST_IO_URING=0 RUNCAST_BIN=$(BUILD)/runcast timeout -k 5 600 python3 tests/integration/run.py $(STREAM_TESTS)

# The whole suite, then the cluster fault tests, on an ASan/UBSan build.
asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test
	@RUNCAST_BIN=build-asan/runcast timeout -k 5 600 python3 tests/cluster/run.py

clean:
	rm -rf build build-asan

.PHONY: FORCE
FORCE:

# ---- fuzzing: libFuzzer harnesses in fuzz/ (clang-14; fuzz/bootstrap installs it) ----
# `make fuzz-smoke`: every harness for 30 s (CI); `make fuzz FUZZ_SECONDS=N`.
FUZZ_BUILD   := build-fuzz
FUZZ_CC      ?= clang-14
FUZZ_SECONDS ?= 300
FUZZ_JOBS    ?= 2
FUZZ_TARGETS := fuzz_http fuzz_sse fuzz_body fuzz_decode fuzz_token fuzz_agui
FUZZ_PKGS    := $(PKGS)
# pkg-config runs when a recipe does (=, not :=), after fuzz/bootstrap.
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra \
                -Wno-unused-parameter -fno-sanitize-recover=undefined \
                $(shell pkg-config --cflags $(FUZZ_PKGS) 2>/dev/null)
FUZZ_LDLIBS   = $(shell pkg-config --libs $(FUZZ_PKGS) 2>/dev/null) -lpthread -lm
FUZZ_OBJ     := $(patsubst src/%.c,$(FUZZ_BUILD)/obj/%.o,$(filter-out src/main.c,$(SRC))) \
                $(FUZZ_BUILD)/obj/web_assets.o
FUZZ_BIN     := $(addprefix $(FUZZ_BUILD)/,$(FUZZ_TARGETS))

.PHONY: fuzz-build fuzz-smoke fuzz
fuzz-build: $(FUZZ_BIN)

$(FUZZ_BUILD)/.bootstrapped: fuzz/bootstrap scripts/bootstrap
	@fuzz/bootstrap
	@mkdir -p $(FUZZ_BUILD) && touch $@

$(FUZZ_BUILD)/obj/%.o: src/%.c $(HDR) $(FUZZ_BUILD)/.bootstrapped
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

$(FUZZ_BUILD)/web_assets.c: $(WEB) scripts/embed-web $(FUZZ_BUILD)/.bootstrapped
	scripts/embed-web $@ $(WEB)

$(FUZZ_BUILD)/obj/web_assets.o: $(FUZZ_BUILD)/web_assets.c src/console.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -Isrc -c -o $@ $<

$(FUZZ_BUILD)/libruncast-fuzz.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^

# A harness may #include the .c it tests; the archive supplies the rest.
$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_BUILD)/libruncast-fuzz.a $(SRC) $(HDR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -Isrc -o $@ $< \
		$(FUZZ_BUILD)/libruncast-fuzz.a $(FUZZ_LDLIBS)

fuzz-smoke: fuzz-build
	@fuzz/run 30 2 $(FUZZ_TARGETS)

fuzz: fuzz-build
	@fuzz/run $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_TARGETS)

# ---- valgrind: the integration suite with every daemon under memcheck
# (RUNCAST_VALGRIND=1, see tests/integration/harness.py: deadlines scaled,
# any memcheck error or definite leak fails the test that started the
# daemon). Installs valgrind with apt-get when it is missing. Timing-sensitive
# tests are marked @test(valgrind=False) and left out. VALGRIND_FILTER picks
# tests by name, as run.py's FILTERs do.
VALGRIND_FILTER ?=

.PHONY: valgrind
valgrind: $(BUILD)/runcast
	@command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	@RUNCAST_VALGRIND=1 RUNCAST_BIN=$(BUILD)/runcast UNIT_BINS= scripts/run-tests --no-e2e $(VALGRIND_FILTER)
