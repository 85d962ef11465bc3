# syncgate — see README.md. Every target works on a fresh machine with Go.
GO      ?= go
BIN     ?= bin/syncgate
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build run test testenv test-go fuzz bench lint clean

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
	GO='$(GO)' bash tools/testenv.sh $(MAKE) test-go fuzz

## testenv: start the test servers and print their exports; Ctrl-C stops them.
testenv:
	@GO='$(GO)' bash tools/testenv.sh

test-go:
	$(GO) test -race -count=1 -timeout 20m ./...

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

## bench: Go benchmarks and the end-to-end load generator, one run on this machine.
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s -benchmem ./storage/embedded/ ./conflict/ ./gateway/ ./sync/...
	./$(BIN) bench --devices 50 --rate 500 --duration 10s

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
