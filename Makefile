# omni: `make run` starts the service with the bundled example plugin; `make test` runs the test suite.
# Every target installs what it needs, idempotently, on a fresh Debian machine.

SHELL := /bin/bash
PY := .venv/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GO := golang-go golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev delve
UI := examples/hello-plugin/ui
export OMNI_RUNTIME_DIR ?= $(if $(XDG_RUNTIME_DIR),$(XDG_RUNTIME_DIR)/omni,/tmp/omni-$(shell id -u))
export OMNIVIEW_HOME ?= $(HOME)/.omniview

.PHONY: setup bytecode supervisor-defaults run test test-fast bench contract go node chromium clean

setup: .venv/.installed go node bytecode supervisor-defaults

# `supervisord -c supervisor.d/omni.conf` typed with no OMNI_RUNTIME_DIR: this .pth gives supervisord and supervisorctl
# on omni's config the runtime dir omni computes (omnibroker/locations.py: supervisor_defaults).
supervisor-defaults: .venv/.installed
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
		cmp -s deploy/omni-supervisor-defaults.pth "$$site/omni-supervisor-defaults.pth" || \
		cp deploy/omni-supervisor-defaults.pth "$$site/omni-supervisor-defaults.pth"

# Our modules' .pyc, written now: where PYTHONDONTWRITEBYTECODE is set, every worker (100 of them at scale) and every
# omnictl call would otherwise compile the sources again at each start (about a third of the time a worker spends importing).
bytecode: .venv/.installed
	@$(PY) -m compileall -q omnibroker omniworker omnibridge

.venv/.installed: pyproject.toml
	@python3 -m venv --help >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv; }
	python3 -m venv .venv
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

go:
	@if ! command -v go >/dev/null || ! command -v dlv >/dev/null || \
		[ ! -d /usr/share/gocode/src/github.com/hashicorp/go-plugin ]; then \
		echo "installing Go, go-plugin and delve from Debian"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_GO); fi

node: $(UI)/node_modules/.package-lock.json

$(UI)/node_modules/.package-lock.json: $(UI)/package-lock.json
	cd $(UI) && npm ci --no-audit --no-fund
	touch $@

chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

# supervisord runs in the foreground of this shell's job; the dashboard's URL (with its token) is printed once the bridge
# has written <runtime>/bridge.url. Ctrl-C reaches supervisord (same process group) and is passed on, which stops all.
run: setup
	@mkdir -p -m 700 "$(OMNI_RUNTIME_DIR)"
	@rm -f "$(OMNI_RUNTIME_DIR)/bridge.url"
	@echo "omni: runtime $(OMNI_RUNTIME_DIR), home $(OMNIVIEW_HOME)"
	@echo "omni: in another shell: PATH=$$PWD/.venv/bin:\$$PATH OMNI_RUNTIME_DIR=$(OMNI_RUNTIME_DIR) omnictl list"
	@url="$(OMNI_RUNTIME_DIR)/bridge.url"; \
	PATH="$$PWD/.venv/bin:$$PATH" .venv/bin/supervisord -n -c supervisor.d/omni.conf & sv=$$!; \
	trap 'kill -TERM $$sv 2>/dev/null' INT TERM; \
	for i in $$(seq 600); do [ -s "$$url" ] && break; kill -0 $$sv 2>/dev/null || break; sleep 0.1; done; \
	if [ -s "$$url" ]; then echo "omni: dashboard $$(cat "$$url")  (again later: omnictl dashboard)"; \
	elif kill -0 $$sv 2>/dev/null; then echo "omni: the bridge has not written $$url yet: see $(OMNI_RUNTIME_DIR)/omnibridge.log"; fi; \
	while kill -0 $$sv 2>/dev/null; do wait $$sv; done; wait $$sv

test: setup chromium
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

contract: setup
	$(PY) ../shared/tools/contract_check.py

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf .venv build examples/hello-plugin/build tests/artifacts
	find omnibroker omniworker omnibridge -name __pycache__ -prune -exec rm -rf {} +
