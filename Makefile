.PHONY: run test lint bench
# The two commands of the README. Both install and start what they need (as root on Debian).
run:
	scripts/run.sh

test:
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/mypy

bench:
	.venv/bin/python bench/run.py
