# runner: the commands a user and CI need. `make run` and `make test` are the README's two.
CARGO ?= cargo
PYTHON ?= python3
EXP ?= experiments/lenet5_fashion_mnist.toml

.PHONY: run build build-cuda gpu-check test data venv torch chromium slurm bench bench-torch fmt lint clean

build:
	$(CARGO) build --release

# The CUDA build, with no GPU and no CUDA toolkit here: NVIDIA's CUDA 13.0 compiler and
# libraries as pinned Python wheels in .cuda/ (gpu/cuda-root.sh), then `--features cuda`
# for compute capability $(CUDA_COMPUTE_CAP) (9.0: H100 / H200) into target/cuda/release/.
# CUDA_FEATURES=cudnn adds cuDNN 9.19 and runner's own cuDNN convolutions (src/ops/cudnn.rs)
# into target/cudnn/release/ (docs/gpu.md).
CUDA_COMPUTE_CAP ?= 90
CUDA_FEATURES ?= cuda
CUDA_TARGET = target/$(CUDA_FEATURES)
build-cuda:
	@root=$$(bash gpu/cuda-root.sh $(CUDA_FEATURES)) && \
	  PATH="$$root/bin:$$PATH" CUDA_ROOT="$$root" CUDA_PATH="$$root" \
	  CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CUDAFORGE_THREADS=$${CUDAFORGE_THREADS:-2} \
	  $(CARGO) build --release --features $(CUDA_FEATURES) --target-dir $(CUDA_TARGET) --bin runner --bin runner-bench --bin runner-parity
	@# 208 MB of binaries (mostly sm_90 kernels) in a 25 MB archive: what is carried to the GPU machine.
	tar -C $(CUDA_TARGET)/release -cJf $(CUDA_TARGET)/runner-$(CUDA_FEATURES).tar.xz runner runner-bench runner-parity
	@ls -l $(CUDA_TARGET)/runner-$(CUDA_FEATURES).tar.xz

# On the GPU machine, from the repository root with $(CUDA_TARGET)/release (or its archive)
# carried along: parity with the CPU, short training runs and the bench beside PyTorch (gpu/check.sh).
gpu-check:
	@[ -x $(CUDA_TARGET)/release/runner ] || { mkdir -p $(CUDA_TARGET)/release && tar -C $(CUDA_TARGET)/release -xJf $(CUDA_TARGET)/runner-$(CUDA_FEATURES).tar.xz; }
	bash gpu/check.sh gpu-out $(CUDA_TARGET)/release

# Fashion-MNIST from Debian's package where apt exists; otherwise the run downloads it.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist) || \
	  echo "apt could not install dataset-fashion-mnist; the run will download Fashion-MNIST"; \
	else echo "no apt: the run will download Fashion-MNIST into data/fashion_mnist"; fi

run: data build
	./target/release/runner $(EXP)

# Debian's Chromium drives runner board's page in the tests (headless).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  ($(CAN_APT) && (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium))) || \
	  echo "WARNING: chromium not installed: the board's browser test will be skipped"

# The tests' Python packages in a project-local venv, .venv: Debian refuses `pip install`
# into its own Python (externally-managed-environment). The venv is made over Debian's
# /usr/bin/python3 with its system packages, so the parity tests see python3-torch; pyarrow
# stays below 22, the last that works with Debian's NumPy 1.x (which torch 1.13 needs).
# Debian's venv module is the package python3-venv, installed here where apt works.
VENV = .venv
PY_TEST_DEPS = "pyarrow>=17,<22" safetensors pycocotools tensorboard onnx onnxruntime
venv: torch
	@base=$$(command -v /usr/bin/python3 || command -v python3); \
	  [ -x $(VENV)/bin/pip ] || { rm -rf $(VENV); $$base -m venv --system-site-packages $(VENV) 2>/dev/null; } || \
	  { rm -rf $(VENV); $(CAN_APT) && (apt-get install -y -q python3-venv || (apt-get update -q && apt-get install -y -q python3-venv)) && \
	    $$base -m venv --system-site-packages $(VENV); } || \
	  echo "WARNING: could not make the venv $(VENV) (on Debian: apt-get install python3-venv): the pyarrow checks will fail"
	@[ ! -x $(VENV)/bin/pip ] || $(VENV)/bin/python -c "import pyarrow, safetensors, pycocotools, tensorboard, onnx, onnxruntime" 2>/dev/null || \
	  $(VENV)/bin/pip install --quiet $(PY_TEST_DEPS) || \
	  echo "WARNING: pip could not install $(PY_TEST_DEPS) into $(VENV): the pyarrow, pycocotools, tensorboard and onnx checks will fail"

# Debian's python3-torch and python3-torchvision make the reference models the parity
# tests compare with (tests/fixtures/make_zoo_parity.py); installed where apt works.
torch:
	@/usr/bin/python3 -c "import torch, torchvision" 2>/dev/null || \
	  (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	   (apt-get install -y -q python3-torch python3-torchvision || \
	    (apt-get update -q && apt-get install -y -q python3-torch python3-torchvision))) || \
	  echo "WARNING: python3-torch/python3-torchvision not installed: the PyTorch parity tests will be skipped"

# Tests run in release mode: one optimised build serves `make run` and `make test`.
# The parity tests are required wherever torch could be installed.
# A test whose dependency is missing says SKIPPED in the output and in the closing line; where
# apt could have installed the dependency (root with apt-get), its absence fails the test.
CAN_APT = { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; }

# Debian's Slurm and munge: the Slurm launcher's test starts a one-node cluster on
# 127.0.0.1 with them (tests/slurm/cluster.sh; the daemons need root).
SLURM_PKGS = slurmctld slurmd slurm-client munge
HAVE_SLURM = { command -v sbatch >/dev/null 2>&1 && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ]; }
slurm:
	@$(HAVE_SLURM) || \
	  ($(CAN_APT) && (apt-get install -y -q --no-install-recommends $(SLURM_PKGS) || \
	    (apt-get update -q && apt-get install -y -q --no-install-recommends $(SLURM_PKGS)))) || \
	  echo "WARNING: Slurm not installed: the Slurm launcher's test will be skipped"

test: data venv chromium slurm
	@mkdir -p target && rm -f target/test-skips.log
	RUNNER_PYTHON=$(CURDIR)/$(VENV)/bin/python RUNNER_REQUIRE_PYARROW=1 RUNNER_REQUIRE_PYCOCOTOOLS=1 RUNNER_REQUIRE_TENSORBOARD=1 RUNNER_REQUIRE_ONNX=1 \
	RUNNER_REQUIRE_CHROMIUM=$$( (command -v chromium >/dev/null 2>&1 || $(CAN_APT)) && echo 1 || echo 0) \
	RUNNER_REQUIRE_TORCH=$$( ($(VENV)/bin/python -c "import torch, torchvision, safetensors" 2>/dev/null || $(CAN_APT)) && echo 1 || echo 0) \
	RUNNER_REQUIRE_FASHION_MNIST=$$( ([ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || $(CAN_APT)) && echo 1 || echo 0) \
	RUNNER_REQUIRE_SLURM=$$( (($(HAVE_SLURM) && [ "$$(id -u)" = 0 ]) || $(CAN_APT)) && echo 1 || echo 0) \
	RUNNER_SKIP_LOG=$(CURDIR)/target/test-skips.log \
	$(CARGO) test --release -- --skip board::in_a_browser
	@# The browser tests alone: under the load of the whole suite on two cores, Chromium's
	@# virtual-time pages did not settle within a minute (alone they take seconds).
	RUNNER_REQUIRE_CHROMIUM=$$( (command -v chromium >/dev/null 2>&1 || $(CAN_APT)) && echo 1 || echo 0) \
	RUNNER_SKIP_LOG=$(CURDIR)/target/test-skips.log \
	$(CARGO) test --release --test it board::in_a_browser -- --test-threads=1
	@if [ -s target/test-skips.log ]; then echo "make test: $$(wc -l < target/test-skips.log) skipped:"; cat target/test-skips.log; \
	else echo "make test: nothing skipped"; fi

# Installs Debian's python3-torch for the reference where apt works; prints torch=na otherwise.
bench: build torch
	$(PYTHON) bench/run.py

# The reference users install: the newest PyTorch and torchvision from the package index in
# a project-local venv (.bench-venv, about 5 GB with the CUDA libraries its wheels pull in;
# never used by `make test`), then the table against both references.
bench-torch: build torch
	@[ -x .bench-venv/bin/python ] || /usr/bin/python3 -m venv .bench-venv
	.bench-venv/bin/pip install --quiet --upgrade torch torchvision
	$(PYTHON) bench/run.py

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

clean:
	$(CARGO) clean
