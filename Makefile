# pmmap: `make run` starts the server, `make test` builds and runs the tests.
# Every target installs the Debian packages it needs first (apt-get, as root).

CXX := g++
# RapidJSON scans strings and whitespace 16 bytes at a time with SSE2 (part
# of every x86-64 CPU); ParseInputs costs a quarter less. Its aligned loads
# may read past a string's end within the same 16 bytes, which is safe but
# which the sanitizers would report, so their builds leave it out.
SIMD_FLAGS := $(if $(filter x86_64,$(shell uname -m)),-DRAPIDJSON_SSE2)
CXXFLAGS := -O2 -g $(SIMD_FLAGS)
WARNINGS := -Wall -Wextra -Werror
# Debian's libcpp-httplib was built with these; its headers must see the same.
HTTPLIB_CFLAGS := -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
ALL_CXXFLAGS = -std=c++17 $(WARNINGS) $(HTTPLIB_CFLAGS) -pthread -MMD -MP $(CXXFLAGS) $(EXTRA_CXXFLAGS)
LIBS := -lcpp-httplib -lcurl -lssl -lcrypto -pthread
# Symbols are bound at start-up, not lazily on each one's first call inside
# a job's first webhook calls; the bound table is then made read-only.
LDFLAGS := -Wl,-z,relro,-z,now

# Compiles run in parallel, one job a core.
JOBS := $(shell nproc)

# Where objects go, and the two binaries; the sanitizer builds change all three.
BUILD := build
PMMAP := pmmap
PMMAP_TEST := pmmap_test

# The Debian packages that building and testing need.
PACKAGES := g++ make libcpp-httplib-dev rapidjson-dev libcurl4-openssl-dev libssl-dev catch2 \
            curl openssl python3
FUZZ_PACKAGES := clang-14 libclang-rt-14-dev
FUZZ_SECONDS := 60
# UBSan's pointer-overflow check is off because RapidJSON 1.1.0 (Debian 12's)
# adds an offset to the null pointer of its lazily allocated stack
# (internal/stack.h:117), harmless and fixed upstream after 1.1.0:
# https://github.com/Tencent/rapidjson/issues/1724
UBSAN_FLAGS := -fsanitize=undefined -fno-sanitize=pointer-overflow -fno-sanitize-recover=undefined
# GCC 12 warns of maybe-uninitialized std::function members inside <regex>
# when sanitizers instrument it: a known false positive, and only there.
SANITIZER_WARNINGS := -Wno-maybe-uninitialized

# main's own: the server and its flags; the rest is shared with the tests.
SERVER_SOURCES := pmmap.cpp server.cpp server_routes.cpp flags.cpp events.cpp map_command.cpp
LIB_SOURCES := job.cpp job_worker.cpp circuit.cpp job_files.cpp output.cpp job_table.cpp dispatcher.cpp \
               webhook.cpp json.cpp request.cpp http_pool.cpp caller.cpp log.cpp metrics.cpp journal.cpp \
               crc32c.cpp job_store.cpp net_rules.cpp api_server.cpp job_stats.cpp line_inputs.cpp redrive.cpp
# The page at / (page.hpp): its files, embedded into the binary by a
# generated source, a build output that the server links (not linted).
PAGE_FILES := page/index.html page/app.js page/style.css
PAGE_SOURCE := build/gen/page_files.cpp
TEST_SOURCES := test/main.cpp test/harness.cpp test/json_test.cpp test/request_test.cpp \
                test/job_test.cpp test/webhook_test.cpp test/api_test.cpp test/delivery_test.cpp \
                test/ops_test.cpp test/https_test.cpp test/journal_test.cpp test/job_store_test.cpp \
                test/durable_test.cpp test/circuit_test.cpp test/outage_test.cpp test/security_test.cpp \
                test/budget_test.cpp test/job_stats_test.cpp test/page_test.cpp test/shell_test.cpp
FUZZ_SOURCES := test/fuzz_main.cpp json.cpp request.cpp job.cpp job_worker.cpp circuit.cpp job_files.cpp \
                output.cpp log.cpp metrics.cpp journal.cpp crc32c.cpp job_store.cpp net_rules.cpp job_stats.cpp

LIB_OBJECTS := $(LIB_SOURCES:%.cpp=$(BUILD)/%.o)
TEST_OBJECTS := $(TEST_SOURCES:%.cpp=$(BUILD)/%.o)

.PHONY: all deps run test asan tsan fuzz soak demo bench clean lint format fresh-test image-test mutants \
        ui-test

all: $(PMMAP) $(PMMAP_TEST)

# Installs whatever of the packages is missing; quiet when all are there.
define install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi
endef

deps:
	$(call install,$(PACKAGES))

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(ALL_CXXFLAGS) -I. -c $< -o $@

$(PAGE_SOURCE): $(PAGE_FILES) page/embed.sh
	@mkdir -p $(dir $@)
	page/embed.sh $(PAGE_FILES) >$@.tmp && mv $@.tmp $@

$(PMMAP): $(SERVER_SOURCES:%.cpp=$(BUILD)/%.o) $(BUILD)/$(PAGE_SOURCE:.cpp=.o) $(LIB_OBJECTS)
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDFLAGS) $(LIBS)

$(PMMAP_TEST): $(TEST_OBJECTS) $(LIB_OBJECTS)
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDFLAGS) $(LIBS)

run: deps
	$(MAKE) -j$(JOBS) $(PMMAP)
	./$(PMMAP) $(ARGS)

# The last line of the tests' output is "N passed, N failed".
test: deps
	$(MAKE) -j$(JOBS) $(PMMAP) $(PMMAP_TEST)
	PMMAP_BIN=./$(PMMAP) ./$(PMMAP_TEST) $(TEST_ARGS)

# The whole suite with AddressSanitizer and UndefinedBehaviorSanitizer, the
# server under test included; any report fails the run.
asan: deps
	$(MAKE) -j$(JOBS) BUILD=build/asan PMMAP=build/asan/pmmap PMMAP_TEST=build/asan/pmmap_test \
	  CXXFLAGS="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CXXFLAGS="-fsanitize=address $(UBSAN_FLAGS) $(SANITIZER_WARNINGS)" \
	  build/asan/pmmap build/asan/pmmap_test
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  PMMAP_BIN=build/asan/pmmap build/asan/pmmap_test $(TEST_ARGS)

# The whole suite with ThreadSanitizer, the server under test included.
tsan: deps
	$(MAKE) -j$(JOBS) BUILD=build/tsan PMMAP=build/tsan/pmmap PMMAP_TEST=build/tsan/pmmap_test \
	  CXXFLAGS="-O1 -g" EXTRA_CXXFLAGS="-fsanitize=thread $(SANITIZER_WARNINGS)" \
	  build/tsan/pmmap build/tsan/pmmap_test
	TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$(CURDIR)/test/tsan.supp" \
	  PMMAP_BIN=build/tsan/pmmap build/tsan/pmmap_test $(TEST_ARGS)

# libFuzzer over everything pmmap parses from a caller or a webhook: replays
# the seed corpus in test/fuzz_corpus, then fuzzes for FUZZ_SECONDS.
fuzz: deps
	$(call install,$(FUZZ_PACKAGES))
	@mkdir -p build/fuzz
	clang++-14 -std=c++17 -O1 -g -I. -fsanitize=fuzzer,address $(UBSAN_FLAGS) \
	  $(FUZZ_SOURCES) -o build/fuzz/pmmap_fuzz -lcurl -pthread
	rm -rf build/fuzz/corpus && mkdir -p build/fuzz/corpus
	build/fuzz/pmmap_fuzz -runs=0 test/fuzz_corpus
	build/fuzz/pmmap_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=10 \
	  -artifact_prefix=build/fuzz/ build/fuzz/corpus test/fuzz_corpus

# Clang's thread-safety analysis (-Wthread-safety) over every source, with
# the build's own warnings as errors, then clang-format's verdict on every
# file against .clang-format. Changes nothing; `make format` rewrites.
LINT_PACKAGES := clang-14 clang-format-14
LINT_SOURCES := $(SERVER_SOURCES) $(LIB_SOURCES) $(TEST_SOURCES) test/soak.cpp test/fuzz_main.cpp bench/bare_loop.cpp
FORMAT_FILES = $(wildcard *.cpp *.hpp test/*.cpp test/*.hpp bench/*.cpp)
lint: deps
	$(call install,$(LINT_PACKAGES))
	$(MAKE) -j$(JOBS) $(LINT_SOURCES:%.cpp=build/lint/%.ok)
	clang-format-14 --dry-run -Werror $(FORMAT_FILES)

build/lint/%.ok: %.cpp
	@mkdir -p $(dir $@)
	clang++-14 -std=c++17 -fsyntax-only $(WARNINGS) -Wthread-safety -Wthread-safety-beta \
	  $(HTTPLIB_CFLAGS) -MMD -MP -MT $@ -MF $(@:.ok=.d) -I. $< && touch $@

format:
	clang-format-14 -i $(FORMAT_FILES)

# The page at / in a real browser: test/ui_test.py (Python's standard
# library only) drives headless Chromium over its DevTools pipe against the
# real binary and a slow webhook, and saves build/ui-list.png, ui-job.png
# and ui-phone.png. Its last line is "N passed, N failed"; about 15 s.
UI_PACKAGES := chromium
ui-test: deps
	$(call install,$(UI_PACKAGES))
	$(MAKE) -j$(JOBS) $(PMMAP)
	python3 test/ui_test.py --pmmap ./$(PMMAP) --out $(BUILD)

# Every planted bug of test/mutants.txt, each alone in a scratch copy of the
# tree: fails unless the tests it names catch it. MUTANTS="name ..." picks
# some. Slow (a build, then a rebuild per mutant); not part of CI.
mutants: deps
	test/mutants.sh $(MUTANTS)

# A few minutes of faults against a running server; prints what it found.
# Not part of CI.
SOAK_SECONDS := 120
soak: deps
	$(MAKE) -j$(JOBS) $(PMMAP) $(BUILD)/soak
	$(BUILD)/soak --pmmap ./$(PMMAP) --seconds $(SOAK_SECONDS)

$(BUILD)/soak: $(BUILD)/test/soak.o
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LDFLAGS) $(LIBS)

demo: deps
	$(MAKE) $(PMMAP)
	test/demo.sh

# The README's set-up block and `make test` in a bare debian:bookworm container
# (docker or podman), so that a missing install step shows; minutes, not in CI.
fresh-test:
	test/fresh_test.sh

# The Dockerfile's image, built with docker or podman: it refuses a /data it cannot write, runs
# a job end to end with a named volume on /data, and still has it after a restart; minutes,
# not in CI.
image-test:
	test/image_test.sh

# The benchmark: nginx and wrk on loopback; never part of `make test`.
BENCH_PACKAGES := nginx-light wrk
bench: deps
	$(call install,$(BENCH_PACKAGES))
	$(MAKE) $(PMMAP)
	python3 bench/bench.py

clean:
	rm -rf build pmmap pmmap_test pmmap-static

-include $(wildcard $(BUILD)/*.d $(BUILD)/test/*.d build/lint/*.d build/lint/*/*.d)

# pmmap-static: a fully static binary built only from Debian packages and sources (static/build.sh).
.PHONY: static static-test
static:
	static/build.sh

# The integration tests against pmmap-static (the test binary itself is the normal build).
static-test: deps
	$(MAKE) -j$(JOBS) static $(PMMAP_TEST)
	PMMAP_BIN=./pmmap-static ./$(PMMAP_TEST) "[api],[delivery],[ops]"
