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

test: setup lint
	$(CARGO) test --release

doctor: setup
	$(CARGO) run --release -- doctor

# Benchmarks print figures (images/s); they assert nothing about time.
bench: setup
	$(CARGO) bench --bench decode
	$(CARGO) bench --bench dashboard
	$(CARGO) bench --bench watch
	$(CARGO) bench --bench attach
	$(CARGO) build --release
	./target/release/tlcap-tui bench
