# The two commands: `make run` and `make test`.
.PHONY: run stop test
run:
	@bash scripts/run.sh
stop:
	@bash scripts/stop.sh
test:
	@bash scripts/test.sh
