.PHONY: run test lint bench
# The two commands of the README. Both install and start what they need (as root on Debian).
run:
	scripts/run.sh

test:
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/mypy

# Benchmarks and fault drills against a private stack (see bench/README.md); prints numbers.
bench:
	.venv/bin/python bench/run.py
