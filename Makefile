# The two commands: `make run` and `make test`.
.PHONY: run stop test bench fuzz
run:
	@bash scripts/run.sh
stop:
	@bash scripts/stop.sh
test:
	@bash scripts/test.sh
# Every fuzz target for FUZZ_SECONDS (default 60) each; nightly + cargo-fuzz.
fuzz:
	@bash scripts/fuzz.sh
bench:
	@bash benches/run.sh
	@SKIP_BUILD=1 bash benches/auth.sh
	@SKIP_BUILD=1 bash benches/standby.sh
	@SKIP_INSTALL=1 bash benches/wal.sh
	@SKIP_INSTALL=1 bash benches/sql.sh
	@SKIP_INSTALL=1 bash benches/capture.sh
	@SKIP_INSTALL=1 bash benches/retention.sh
	@SKIP_BUILD=1 bash benches/webhooks.sh
	@bash benches/collect.sh
