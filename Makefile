# syncgate — see README.md. Every target works on a fresh machine with Go.
GO      ?= go
BIN     ?= bin/syncgate
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build run test testenv test-go test-js fuzz bench bench-go bench-load bench-js lint clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/syncgate

## run: the gateway on its embedded default (bbolt in ./data, in-process fan-out).
run: build
	./$(BIN) serve

## test: lint, then everything under the race detector plus short fuzzing of
## every decoder, against real Redis and MongoDB-wire servers. tools/testenv.sh
## installs redis-server if missing, builds tools/ferretdb (FerretDB) into
## bin/ferretserver, starts both on free loopback ports, exports
## SYNCGATE_REDIS_ADDR and SYNCGATE_MONGO_URI, and stops them afterwards. If
## those variables are already set, it uses the given servers and starts nothing.
test: lint
	GO='$(GO)' bash tools/testenv.sh $(MAKE) test-go fuzz test-js

## testenv: start the test servers and print their exports; Ctrl-C stops them.
testenv:
	@GO='$(GO)' bash tools/testenv.sh

test-go:
	$(GO) test -race -count=1 -timeout 20m ./...

## test-js: the JS client (clients/js): npm ci, the build (tsc, the bundle),
## unit tests (Node's test runner, fake-indexeddb), integration tests against
## a real bin/syncgate, and the browser test in Debian's Chromium (installed
## with apt-get when missing) driven by playwright-core.
test-js: build
	bash tools/chromium.sh
	cd clients/js && npm ci --no-audit --no-fund && npm run build && \
		$(JS_TIMEOUT) npm run test:unit && $(JS_TIMEOUT) npm run test:integration && $(JS_TIMEOUT) npm run test:browser

# A backstop over the test runner's own per-test timeout and forced exit: a
# JS test step that hangs fails here within 10 minutes instead of holding CI.
JS_TIMEOUT ?= timeout -k 10s 10m

# Each decoder gets a short coverage-guided run on top of its seed corpus
# (the seeds alone already run in test-go). Budgets are execution counts,
# not durations: a time budget can end while a worker is mid-input, which go
# test reports as a spurious "context deadline exceeded" failure.
FUZZ_DECODE ?= 500000x
FUZZ_VERIFY ?= 100000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZ_DECODE) ./sync/protocol/
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZ_VERIFY) ./gateway/auth/
	$(GO) test -run '^$$' -fuzz '^FuzzContentDigest$$' -fuzztime $(FUZZ_VERIFY) ./gateway/

## bench: every benchmark, one run on this machine, against real servers
## (tools/testenv.sh starts Redis and FerretDB as for make test, or uses the
## SYNCGATE_* servers given): the Go benchmarks, the MongoDB store's
## (commit vs raw InsertMany, media vs the driver's GridFS, each pair in one
## run), then syncgate bench on one embedded node (the SYNCGATE_* variables
## unset, or it would use the servers) and across 3 nodes sharing MongoDB
## and Redis, every delivery crossing nodes. About 4 minutes on 2 cores, plus
## a minute the first time to build FerretDB. On FerretDB (SQLite: one
## writer at a time, and every query but a point read by _id scans its
## collection) the cross-node run measures the test server, far below
## 1,000 pushes/s; set SYNCGATE_MONGO_URI to a real MongoDB for that figure.
bench: build
	GO='$(GO)' bash tools/testenv.sh $(MAKE) bench-go bench-load bench-js

# Durations, not counts: an operation takes from microseconds (resolvers)
# to a second (8 MiB through FerretDB). On FerretDB every Commit scans the
# log, so a longer MONGO_BENCHTIME gives a bigger log and a lower ratio.
BENCHTIME       ?= 2s
MONGO_BENCHTIME ?= 3s
BENCH_DURATION  ?= 10s
bench-go:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem ./storage/embedded/ ./conflict/ ./presence/ ./gateway/ ./sync/...
	$(GO) test -run '^$$' -bench . -benchtime $(MONGO_BENCHTIME) -benchmem -timeout 10m ./storage/mongo/

## bench-js: the JS client's replica: 10,000 incoming changes, startup from
## IndexedDB with 10,000 documents (fake-indexeddb in Node).
bench-js:
	cd clients/js && npm ci --no-audit --no-fund && npm run build && npm run bench

bench-load:
	env -u SYNCGATE_MONGO_URI -u SYNCGATE_REDIS_ADDR ./$(BIN) bench --devices 50 --rate 500 --duration $(BENCH_DURATION)
	./$(BIN) bench --nodes 3 --mongo-uri "$$SYNCGATE_MONGO_URI" --redis-addr "$$SYNCGATE_REDIS_ADDR" --rate 1000 --duration $(BENCH_DURATION)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
