# The README's two commands: `make run` (the main job) and `make test` (the whole suite).
# Both do their own set-up on a fresh machine (scripts/setup.py; idempotent, ~0.1 s when done).
CARGO ?= cargo
PYTHON ?= python3

.PHONY: setup run test lint doctor bench
setup:
	$(PYTHON) scripts/setup.py all

run: setup
	$(CARGO) build --release
	./target/release/tlcap-tui check experiments
	./target/release/tlcap-tui experiments

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# The suite's decoded-image cache is its own, emptied first (not the user's).
test: setup lint
	rm -rf target/test-image-cache
	TLCAP_IMAGE_CACHE=$(CURDIR)/target/test-image-cache $(CARGO) test --release

doctor: setup
	$(CARGO) run --release -- doctor

# Benchmarks print figures (images/s); they assert nothing about time.
bench: setup
	$(CARGO) bench --bench decode
	$(CARGO) bench --bench dashboard
	$(CARGO) bench --bench watch
	$(CARGO) bench --bench attach
	$(CARGO) bench --bench image_cache
	$(CARGO) build --release
	./target/release/tlcap-tui bench
