# Benchmarks of the strangler kit (see docs/benchmarks.md).
# They need the local PostgreSQL and RabbitMQ; `make bench` also needs wrk
# (`apt-get install -y wrk`), or run `make bench BENCH_ARGS="--load-tool python"`.

PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-smoke chaos
CHAOS_ARGS ?=

# Every benchmark at the issue's sizes (several minutes); tables printed,
# JSON written to bench/results/<name>.json.
bench:
	$(PYTHON) -m bench $(BENCH_ARGS)

# Every benchmark at a tiny size (under a minute): checks they still run.
bench-smoke:
	$(PYTHON) -m bench --smoke --load-tool python $(BENCH_ARGS)

# The long fault run (tests/chaos, docs/reliability.md): 100,000+ changes through the
# real pipeline while the write group moves to the new system and is handed back, the
# bridge, the consumer and back-sync are SIGKILLed 36 times and RabbitMQ is restarted 4
# times; prints the summary as JSON and as a Markdown table. Needs the local PostgreSQL
# and RabbitMQ (with rabbitmqctl). The bounded run is part of `pytest`.
chaos:
	$(PYTHON) -m tests.chaos --long $(CHAOS_ARGS)
