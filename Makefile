# pmmap: `make run` starts the server, `make test` builds and runs the tests.
# Both install the Debian packages they need first (apt-get, as root).

CXX ?= g++
CXXFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra -Werror
HTTPLIB_CFLAGS := -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
ALL_CXXFLAGS = -std=c++17 $(WARNINGS) $(HTTPLIB_CFLAGS) -pthread -MMD -MP $(CXXFLAGS) $(EXTRA_CXXFLAGS)
LIBS := -lcpp-httplib -lcurl -lssl -lcrypto -pthread
BUILD ?= build

# The Debian packages that building, testing and benchmarking need.
PACKAGES := g++ make libcpp-httplib-dev rapidjson-dev libcurl4-openssl-dev libssl-dev catch2 curl

LIB_SOURCES := job.cpp dispatcher.cpp json.cpp request.cpp http_pool.cpp log.cpp metrics.cpp
TEST_SOURCES := test/main.cpp test/harness.cpp test/json_test.cpp test/request_test.cpp \
                test/job_test.cpp test/dispatcher_test.cpp test/api_test.cpp test/delivery_test.cpp \
                test/ops_test.cpp

LIB_OBJECTS := $(LIB_SOURCES:%.cpp=$(BUILD)/%.o)
TEST_OBJECTS := $(TEST_SOURCES:%.cpp=$(BUILD)/%.o)

.PHONY: all deps run test demo clean

all: pmmap pmmap_test

# Installs whatever of PACKAGES is missing; does nothing when all are there.
deps:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(ALL_CXXFLAGS) -I. -c $< -o $@

pmmap: $(BUILD)/pmmap.o $(LIB_OBJECTS)
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LIBS)

pmmap_test: $(TEST_OBJECTS) $(LIB_OBJECTS)
	$(CXX) $(ALL_CXXFLAGS) $^ -o $@ $(LIBS)

run: deps
	$(MAKE) pmmap
	./pmmap $(ARGS)

# The last line of the output is "N passed, N failed".
test: deps
	$(MAKE) pmmap pmmap_test
	PMMAP_BIN=./pmmap ./pmmap_test $(TEST_ARGS)

demo: deps
	$(MAKE) pmmap
	test/demo.sh

clean:
	rm -rf $(BUILD) pmmap pmmap_test

-include $(wildcard $(BUILD)/*.d $(BUILD)/test/*.d)

# The benchmark (issue: performance): nginx and wrk on loopback; never part of `make test`.
.PHONY: bench
bench: deps
	$(MAKE) pmmap
	bench/run.sh
