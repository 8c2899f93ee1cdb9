# Set-up, demo and checks for xnatfs on Debian.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := fuse3 libfuse3-dev pkg-config dcm2niix attr rsync curl stress-ng
# What only the benchmark uses: rclone mount, the peer it compares with.
BENCH_DEBS := rclone
MNT    ?= ./mnt

.PHONY: install install-mount-helper system-deps bench-deps demo test lint bench soak clean

system-deps:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[fake,test]'
	touch $@

install: system-deps $(VENV)/.installed

# mount(8) runs /sbin/mount.fuse.<type> for `mount -t fuse.xnatfs` and fstab lines.
install-mount-helper: install
	$(SUDO) ln -sfn $(abspath $(VENV))/bin/mount.fuse.xnatfs /sbin/mount.fuse.xnatfs

demo: install
	$(VENV)/bin/xnatfs demo $(MNT)

# Two workers, each test file whole on one: most tests wait on a mount or a server,
# and a file's tests share its fixtures.
test: install lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

lint: install
	$(VENV)/bin/ruff check xnatfs tests scripts
	$(VENV)/bin/ruff format --check xnatfs tests scripts
	$(VENV)/bin/mypy xnatfs

bench-deps:
	@$(MAKE) --no-print-directory system-deps DEBS="$(DEBS) $(BENCH_DEBS)"

bench: install bench-deps
	$(PY) scripts/bench.py

soak: install
	$(PY) scripts/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
