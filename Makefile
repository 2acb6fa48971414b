# lockstep — the two set-up commands: `make demo` and `make test`.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: deps build test test-asan soak demo observe bench clean

deps:
	scripts/install-deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Every CPU test, including the bad-input parsers under AddressSanitizer +
# UBSan (label `asan`, built as part of `build` via the asan_tests target).
test: build
	cmake --build $(BUILD_DIR) -j $(JOBS) --target asan_tests
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -LE 'cuda|benchmark|soak'

# The fault soak (tests/integration/rl_soak_test.cc): 3 rollouts killed and
# restarted under load while the learner trains, LOCKSTEP_SOAK_SECONDS long
# (default 600).
soak: build
	cd $(BUILD_DIR) && LOCKSTEP_SOAK_SECONDS=$${LOCKSTEP_SOAK_SECONDS:-600} ctest --output-on-failure -V -L soak

# Only the AddressSanitizer tests.
test-asan: build
	cmake --build $(BUILD_DIR) -j $(JOBS) --target asan_tests
	cd $(BUILD_DIR) && ctest --output-on-failure -L asan

demo: build
	scripts/demo.sh $(BUILD_DIR)

# Prometheus on loopback scraping the services `make demo` starts.
observe: deps
	scripts/observe.sh

bench: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release -DLOCKSTEP_BUILD_BENCH=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS) --target kernels_bench
	$(BUILD_DIR)/bench/kernels_bench

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR)-asan
