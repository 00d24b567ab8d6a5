# The two commands a newcomer needs (see README): `make demo` and `make test`.
# Each one sets up everything it needs on a fresh machine first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install-prometheus install-stunnel install-redis install-kustomize install-helm install-maven kafka-jars clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/session-metrics demo $(ARGS)

# The throughput benchmark (see BENCHMARKS.md): adds matplotlib and pyinstrument; runs on
# Tansu and on Apache Kafka by default (ARGS="--broker tansu" or "--broker kafka" for one).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) kafka-jars install-redis
	$(BIN)/python -m bench $(ARGS)

# The real-Prometheus tests need Debian's prometheus package (server + promtool).
install-prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq prometheus >/dev/null; }

# The claim-store tests run Debian's redis-server (7.x: its SET takes NX with GET).
install-redis:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# The Kafka TLS tests put Debian's stunnel4 (a TLS terminator) in front of the
# broker, and make their certificates with the openssl CLI it depends on.
install-stunnel:
	@command -v stunnel4 >/dev/null && command -v openssl >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq stunnel4 >/dev/null; }

# The deploy tests render deploy/ with `kubectl kustomize` or `kustomize build`. With
# neither on PATH, kustomize is built from the Go module proxy into the venv (Go >= 1.22),
# the version kubectl 1.32 embeds.
KUSTOMIZE_VERSION := v5.5.0
install-kustomize: $(STAMP)
	@command -v kubectl >/dev/null || command -v kustomize >/dev/null || [ -x $(BIN)/kustomize ] || { \
	  command -v go >/dev/null || { echo "make: the deploy tests need kubectl, or kustomize $(KUSTOMIZE_VERSION), or Go to build it: install one of them" >&2; exit 1; }; \
	  echo "make: building kustomize $(KUSTOMIZE_VERSION) into $(BIN) (the deploy tests need it)"; \
	  GOBIN=$(abspath $(BIN)) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); }

# The chart tests (tests/test_helm.py) render deploy/chart with helm. Without it on PATH,
# helm is built from the Go module proxy into the venv (Go >= 1.26), a pinned v3 release;
# the first build takes minutes.
HELM_VERSION := v3.21.4
install-helm: $(STAMP)
	@command -v helm >/dev/null || [ -x $(BIN)/helm ] || { \
	  command -v go >/dev/null || { echo "make: the chart tests need helm $(HELM_VERSION), or Go to build it: install one of them" >&2; exit 1; }; \
	  echo "make: building helm $(HELM_VERSION) into $(BIN) (the chart tests need it)"; \
	  GOBIN=$(abspath $(BIN)) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); }
# The Kafka-marked tests run Apache Kafka itself from its published jars (tests/kafkabroker.py):
# Maven resolves the release pinned in tests/kafka/pom.xml into a cache outside the repository,
# once; later runs find the stamp and stay offline.
KAFKA_POM := tests/kafka/pom.xml
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' $(KAFKA_POM))
KAFKA_JARS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/session-metrics/kafka-$(KAFKA_VERSION)

install-maven:
	@command -v mvn >/dev/null && command -v java >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq maven openjdk-17-jdk-headless >/dev/null; }

kafka-jars: $(KAFKA_JARS)/.complete

$(KAFKA_JARS)/.complete: $(KAFKA_POM)
	@$(MAKE) --no-print-directory install-maven
	rm -rf $(KAFKA_JARS).partial
	mvn -q -B -f $(KAFKA_POM) dependency:copy-dependencies -DincludeScope=runtime \
	  -DoutputDirectory=$(KAFKA_JARS).partial
	rm -rf $(KAFKA_JARS) && mv $(KAFKA_JARS).partial $(KAFKA_JARS)
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) install-prometheus install-redis install-stunnel install-kustomize install-helm kafka-jars lint
	$(BIN)/pytest $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
