# make bench: every stage's benchmark, one table (see crates/rmqm-bench).
BENCH_OUT ?= $(OUT)/bench
bench: build
	@mkdir -p $(BENCH_OUT)
	$(BIN)/rmqm-bench --out $(BENCH_OUT) $(BENCH_ARGS)
