# make run | test | lint | types | fmt | migration SERVICE=<name> MSG="..." | bench | asyncapi | config
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help install run test lint types fmt migration bench asyncapi config

# uv from PATH, else where `pip install --user uv` puts it.
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
# Every workspace member, not only those in the dev group: each service must be importable by
# uvicorn and by its own test suite. The recipes then run in that environment without re-syncing.
SYNC_FLAGS ?= --all-packages
RUN := $(UV) run --no-sync
# The table of services (deploy/services.toml), read with the standard library only.
SERVICES := $(shell python3 deploy/service_table.py names)

help:
	@echo "make run        start PostgreSQL/RabbitMQ-backed services and the gateway locally (Ctrl-C stops);"
	@echo "                ITSM_REPLICAS=2 make run: two processes of every service behind the gateway"
	@echo "make test       lint, types, then every test suite, each service in its own pytest process (what CI runs)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make types      mypy (strict) over libs/, services/ and deploy/"
	@echo "make fmt        ruff format + ruff check --fix"
	@echo "make migration  SERVICE=<name> MSG='...': autogenerate an alembic revision"
	@echo "make bench      the benchmarks (bench/*.py; BENCH='incident_create' for one), summary table at the end"
	@echo "make asyncapi   fetch each running service's /asyncapi.json into build/asyncapi/"
	@echo "make config     rewrite the parts of dynamic.yml, docker-compose.yml and the Helm values made from deploy/services.toml"

install:
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --user uv || python3 -m pip install --user --break-system-packages uv
	$(UV) sync $(SYNC_FLAGS)

# Without ITSM_BOOTSTRAP_ADMIN_PASSWORD, deploy/run.py generates one (kept in .run/) and prints it.
run: install
	$(RUN) python deploy/run.py

# One pytest process per suite: the SQLModel metadata of two services must never share a process.
# A suite that does not exist yet is skipped, one with no tests (pytest exit 5) is not a failure.
# lint and types first: `make test` is the whole check, and the one command CI runs (.ci/run).
test: install lint types
	@failed=(); \
	suites=(libs/shared/tests $(addsuffix /tests,$(addprefix services/,$(SERVICES))) tests/deploy tests/e2e); \
	for suite in "$${suites[@]}"; do \
		if [ ! -d "$$suite" ]; then echo "== $$suite: none yet"; continue; fi; \
		echo "== pytest $$suite"; \
		$(RUN) pytest "$$suite"; rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "== $$suite: no tests yet"; \
		elif [ $$rc -ne 0 ]; then failed+=("$$suite"); fi; \
	done; \
	if [ $${#failed[@]} -ne 0 ]; then echo "FAILED: $${failed[*]}"; exit 1; fi; \
	echo "all suites passed"

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

# deploy/ modules import each other by their plain names (deploy/ is put on sys.path), hence MYPYPATH.
types: install
	MYPYPATH=deploy $(RUN) mypy libs/shared/src $(wildcard services/*/src) $(wildcard deploy/*.py)

fmt: install
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

migration: install
	@test -n "$(SERVICE)" || { echo "usage: make migration SERVICE=<name> MSG='what changed'"; exit 2; }
	@test -n "$(MSG)" || { echo "usage: make migration SERVICE=<name> MSG='what changed'"; exit 2; }
	$(RUN) python -m itsm_shared.migrate $(SERVICE) --revision "$(MSG)"

# The create pipeline first (create, event lag, consumers, list of 50, CPU per create: bench/incident_create.py),
# then the list at 1,000,000 incidents, then the others. BENCH="incident_create incident_list" runs only those.
# Each bench with a summary table leaves it in build/bench/; all of them are printed together at the end.
BENCH_ORDER := incident_create incident_list
BENCH ?= $(BENCH_ORDER) $(filter-out $(BENCH_ORDER),$(basename $(notdir $(wildcard bench/*.py))))
bench: install
	@rm -rf build/bench; failed=(); \
	for name in $(BENCH); do \
		b="bench/$$name.py"; \
		if [ ! -f "$$b" ]; then echo "no benchmark $$b"; failed+=("$$b"); continue; fi; \
		echo "== $$b"; start=$$(date +%s); \
		$(RUN) python "$$b" || failed+=("$$b"); \
		echo "== $$b: $$(( $$(date +%s) - start )) s"; \
	done; \
	$(RUN) python bench/benchlib/summary.py; \
	if [ $${#failed[@]} -ne 0 ]; then echo "FAILED: $${failed[*]}"; exit 1; fi

# Needs the stack running (make run in another terminal) on the ports of deploy/services.toml.
asyncapi:
	@mkdir -p build/asyncapi; \
	python3 deploy/service_table.py ports | while read -r name port; do \
		if curl -fsS "http://127.0.0.1:$$port/asyncapi.json" -o "build/asyncapi/$$name.json"; then \
			echo "build/asyncapi/$$name.json"; else echo "$$name: not running on $$port"; fi; \
	done

# After editing deploy/services.toml; tests/deploy fails while these files differ from the table.
config: install
	$(RUN) python deploy/configs.py
	$(RUN) python deploy/k8s/helm_values.py
