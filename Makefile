# runcast: plain make + pkg-config. `make run`, `make test`, `make asan`.
PKGS      := libuv libcurl jansson
BUILD     ?= build
CC        ?= cc
OPT       ?= -O2
SAN       ?=
CFLAGS    := -std=c11 -D_GNU_SOURCE -g $(OPT) $(SAN) -Wall -Wextra -Werror \
             -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(EXTRA_CFLAGS)
LDFLAGS   += $(SAN)
LDLIBS    := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm

SRC       := $(wildcard src/*.c)
LIB_OBJ   := $(patsubst src/%.c,$(BUILD)/%.o,$(filter-out src/main.c,$(SRC)))
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
WEB       := $(wildcard web/*)

.PHONY: all bootstrap run test unit integration asan clean
all: $(BUILD)/runcast $(UNIT_BIN)

bootstrap:
	@scripts/bootstrap

$(BUILD)/.bootstrapped: scripts/bootstrap
	@scripts/bootstrap
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/%.o: src/%.c $(wildcard src/*.h) $(BUILD)/.bootstrapped
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libruncast.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/runcast: $(BUILD)/main.o $(BUILD)/libruncast.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/test.h $(BUILD)/libruncast.a $(wildcard src/*.c src/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc -o $@ $< $(BUILD)/libruncast.a $(LDFLAGS) $(LDLIBS)

run: $(BUILD)/runcast
	@echo "runcast on http://127.0.0.1:8000 with the built-in demo agent. Try, in another terminal:"
	@echo "  curl -N localhost:8000/apps/demo/users/alice/sessions/s1/run &"
	@echo "  curl -s -X POST localhost:8000/apps/demo/users/alice/sessions/s1/run -H 'Content-Type: application/json' -d '{\"message\": \"hello there\"}'"
	@echo "  curl -s localhost:8000/task-status"
	@echo "Stop with Ctrl-C."
	$(BUILD)/runcast --listen 127.0.0.1:8000 --upstream demo

# Every test: unit binaries, then the integration suite against the real binary.
test: all
	@RUNCAST_BIN=$(BUILD)/runcast UNIT_BINS="$(UNIT_BIN)" scripts/run-tests

unit: all
	@RUNCAST_BIN=$(BUILD)/runcast UNIT_BINS="$(UNIT_BIN)" scripts/run-tests --unit-only

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

clean:
	rm -rf build build-asan
