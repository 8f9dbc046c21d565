# make paper: both tracks (CIFAR-10 only where its data is present), then one report that pools
# them, as the paper's correlations do: OUT/paper/report under RESULTS. The report says which
# tracks entered.

PAPER_OUT ?= $(RESULTS)/paper
PAPER_CIFAR_DATA := $(wildcard $(CIFAR_DATA_DIR)/cifar10/cifar-10-batches-bin/test_batch.bin)
PAPER_TRACKS ?= MNIST $(if $(PAPER_CIFAR_DATA),CIFAR)
PAPER_STATS = $(foreach t,$(PAPER_TRACKS),$($(t)_STATS))
PAPER_CURVES = $(foreach t,$(PAPER_TRACKS),$($(t)_CURVES))
PAPER_PROBES = $(foreach t,$(PAPER_TRACKS),$($(t)_PROBES))

$(PAPER_OUT)/report/report.md: $(foreach t,$(PAPER_TRACKS),$($(t)_OUT)/report/report.md)
	@mkdir -p $(@D)
	$(BIN)/correlate --stats $(PAPER_STATS) --probes $(PAPER_PROBES) --curves $(PAPER_CURVES) $(MNIST_CORRELATE_ARGS) --threads $(THREADS) -o $(@D)

ifeq ($(SCHEDULER),slurm)
paper: paper-slurm-submit
else
paper: build
	@$(if $(PAPER_CIFAR_DATA),,echo "paper: no CIFAR-10 in $(CIFAR_DATA_DIR)/cifar10: the CIFAR-10 track is left out and the report pools MNIST alone")
	$(MAKE) $(PAPER_TRACKS) $(PAPER_OUT)/report/report.md
	@echo "paper: pooled report in $(PAPER_OUT)/report/report.md"
endif
