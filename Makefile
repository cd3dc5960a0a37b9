# The two commands a newcomer needs (see README.md):
#   make run    set up this Debian machine and open the workstation on the bundled demo study
#   make test   set up and run every check and test (what CI runs)
#
# CARGO_TARGET_DIR may point outside the clone (CI keeps one at /var/tmp/lightbox-target).

SHELL := /bin/bash
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
export CARGO_TARGET_DIR := $(TARGET_DIR)
DEMO := demo/prostate-adc
# GPU=1 builds the AI with burn's wgpu backend (a GPU when there is one, else the CPU).
FEATURES := $(if $(GPU),--features lightbox-ai/gpu,)

.PHONY: run test setup ui lint layering build models synthetic-models rust-test gpu-kernel-test ui-test

run: setup ui models
	cargo build --workspace --bins $(FEATURES)
	$(TARGET_DIR)/debug/lightbox info $(DEMO)
	$(TARGET_DIR)/debug/lightbox-workstation $(DEMO)

test: setup ui lint build rust-test ui-test

setup:
	@bash scripts/setup-debian.sh

# The workstation embeds ui/dist at compile time, so the UI is built before any cargo command.
ui: setup
	cd ui && npm run build --silent

lint: ui layering
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

layering:
	@bash scripts/check-layering.sh

build: ui
	cargo build --workspace --bins --locked $(FEATURES)

# On-device models from their registry packages (deepbet from PyPI), converted and checked.
models: build
	LIGHTBOX_BIN=$(TARGET_DIR)/debug/lightbox bash scripts/install-models.sh

# The small lesion model the prostate tests run, trained here on synthetic lesions (cached).
synthetic-models: build
	LIGHTBOX_BIN=$(TARGET_DIR)/debug/lightbox bash scripts/train-synthetic-models.sh

rust-test: build models synthetic-models
	cargo test --workspace --locked
	$(MAKE) gpu-kernel-test

# Lightbox's own GPU kernels (lightbox-ai's `gpu` feature) against burn's, on whatever Vulkan
# device opens: Mesa's lavapipe on a machine without a GPU (scripts/setup-debian.sh installs it);
# and a PlainConvUNet with every 3x3x3 layer on the matrix-unit kernel (emulated there). With
# burn's SPIR-V compiler (spirv-compile-test), which builds the matrix-unit kernel as NVIDIA's
# driver would get it, though nothing here runs it.
gpu-kernel-test:
	cargo test -p lightbox-ai --lib --locked --features spirv-compile-test -- kernels:: nnunet::tests::on_matrix_units

ui-test: ui
	cd ui && npm test --silent
