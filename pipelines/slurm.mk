# make <grid> SCHEDULER=slurm: the grid's missing targets as Slurm jobs, submitted from a login node
# (grids: demo, paper-mnist, paper-cifar, seeds-mnist, paper). Make stays the description of the
# work: every job runs `make <its targets>` in this folder on a node that sees the same filesystem,
# with THREADS from the job's CPUs. Per grid, at most: one job making the shared altered images,
# a job array training the encoders, job arrays for the walks and for the embeddings and probes of
# each encoder (array task i = encoder i of the grid; a task starts when its own encoder is
# trained: aftercorr), and correlate as a final job (afterok on all of them). Jobs whose inputs
# failed are cancelled (--kill-on-invalid-dep=yes). Job ids, logs and the submission records go
# to <grid work folder>/slurm/ (out/demo/slurm, out/paper-mnist/slurm, ...).
#
#   make demo-status         done, queued, running and failed targets (artifacts, squeue, scontrol)
#   make demo SCHEDULER=slurm  again: submits only what is missing and not already queued/running
#
# Resources per stage (sbatch options): SLURM_TRAIN_ARGS, SLURM_WALK_ARGS (also the shared altered
# images), SLURM_PROBE_ARGS, SLURM_REPORT_ARGS; SLURM_ARGS for all (partition, account, QoS).
# Without SCHEDULER=slurm nothing here changes a grid's targets. See pipelines/slurm/README-section.md.

SCHEDULER ?=
SLURM_ARGS ?=
SLURM_TRAIN_ARGS ?= --cpus-per-task=8 --mem=8G
SLURM_WALK_ARGS ?= --cpus-per-task=4 --mem=8G
SLURM_PROBE_ARGS ?= --cpus-per-task=4 --mem=8G
SLURM_REPORT_ARGS ?= --cpus-per-task=2 --mem=4G
SLURM_SCRIPTS := pipelines/slurm

ifeq ($(filter $(SCHEDULER),slurm),)
ifneq ($(strip $(SCHEDULER)),)
$(error SCHEDULER=$(SCHEDULER): the only scheduler is slurm (or leave SCHEDULER unset to run here))
endif
endif

define slurm_nl


endef

# The command-line variables of this make (except SCHEDULER), one `NAME=value` a line, unexpanded:
# every job's make gets them, so its grid is the one submitted.
slurm_vars = $(foreach v,$(sort $(.VARIABLES)),$(if $(and $(filter command line,$(origin $(v))),$(filter-out SCHEDULER,$(v))),$(v)=$(value $(v))$(slurm_nl)))

# The plan of grid $(1) (public name $(2)) for pipelines/slurm/submit and status: one fact a line.
define slurm_plan
name $(2)
grid $(1)
repo $(CURDIR)
make $(MAKE)
dir $($(1)_SLURM_DIR)
report $($(1)_OUT)/report/report.md
inputs $($(1)_STATS) $($(1)_CURVES) $($(1)_PROBES)
$(if $(filter yes,$($(1)_NOISE_EMIT)),,shared noise $($(1)_WORK)/altered/noise.parquet)
shared augment $($(1)_WORK)/altered/augment.parquet
args all $(SLURM_ARGS)
args train $(SLURM_TRAIN_ARGS)
args walk $(SLURM_WALK_ARGS)
args probe $(SLURM_PROBE_ARGS)
args report $(SLURM_REPORT_ARGS)
$(foreach p,$(join $(call slurm_indices,$($(1)_MODELS)),$(addprefix :,$($(1)_MODELS))),$(call slurm_model,$(1),$(word 2,$(subst :, ,$(p))),$(word 1,$(subst :, ,$(p)))))
endef

# 0 1 2 ... for the words of $(1): array task i is the grid's encoder i.
slurm_indices = $(if $(1),$(shell seq 0 $$(( $(words $(1)) - 1 ))))

# One encoder $(2), array index $(3): its model file, walks (kind, targets) and probes (target, embeddings).
define slurm_model
model $(3) $(2) $($(1)_WORK)/models/$(2).safetensors
$(foreach a,$($(1)_WALKS),walk $(3) $(a) $($(1)_OUT)/stats/$(2)-$(a).parquet $($(1)_OUT)/curves/$(2)-$(a).parquet$(slurm_nl))walk $(3) augment $($(1)_OUT)/stats/$(2)-augment.parquet
$(foreach ds,$($(1)_DOWNSTREAM),probe $(3) $(ds) $($(1)_OUT)/probes/$(2)-$(ds).parquet $($(1)_WORK)/embeddings/$(2)-$(ds).parquet$(slurm_nl))
endef

# Grid $(1) with public name $(2): its slurm folder, plan file, submission and status targets.
define SLURM_GRID
$(1)_SLURM_DIR ?= $$($(1)_WORK)/slurm
.PHONY: $(1)-slurm-plan $(1)-slurm-submit $(2)-status
$(1)-slurm-plan:
	@: $$(shell mkdir -p $$($(1)_SLURM_DIR))$$(file >$$($(1)_SLURM_DIR)/$(2).plan,$$(call slurm_plan,$(1),$(2)))$$(file >$$($(1)_SLURM_DIR)/$(2).vars,$$(slurm_vars))

$(1)-slurm-submit: slurm-check build $(1)-check-config $(1)-slurm-plan
	@$(SLURM_SCRIPTS)/submit $$($(1)_SLURM_DIR)/$(2).plan

$(2)-status: $(1)-slurm-plan
	@$(SLURM_SCRIPTS)/status $$($(1)_SLURM_DIR)/$(2).plan
endef

SLURM_NAME_DEMO := demo
SLURM_NAME_MNIST := paper-mnist
SLURM_NAME_CIFAR := paper-cifar
SLURM_NAME_SEEDMNIST := seeds-mnist
$(eval $(call SLURM_GRID,DEMO,demo))
$(eval $(call SLURM_GRID,MNIST,paper-mnist))
$(eval $(call SLURM_GRID,CIFAR,paper-cifar))
$(eval $(call SLURM_GRID,SEEDMNIST,seeds-mnist))

# make paper: the tracks' grids, then the pooled report as one more job after the tracks' reports.
PAPER_SLURM_DIR ?= $(OUT)/paper/slurm
define slurm_paper_plan
name paper
repo $(CURDIR)
make $(MAKE)
dir $(PAPER_SLURM_DIR)
report $(PAPER_OUT)/report/report.md
inputs $(foreach t,$(PAPER_TRACKS),$($(t)_OUT)/report/report.md)
args all $(SLURM_ARGS)
args report $(SLURM_REPORT_ARGS)
endef
.PHONY: paper-slurm-plan paper-slurm-submit paper-status
paper-slurm-plan: $(foreach t,$(PAPER_TRACKS),$(t)-slurm-plan)
	@: $(shell mkdir -p $(PAPER_SLURM_DIR))$(file >$(PAPER_SLURM_DIR)/paper.plan,$(slurm_paper_plan))$(file >$(PAPER_SLURM_DIR)/paper.vars,$(slurm_vars))

paper-slurm-submit: slurm-check build $(foreach t,$(PAPER_TRACKS),$(t)-check-config) paper-slurm-plan
	@$(if $(PAPER_CIFAR_DATA),,echo "paper: no CIFAR-10 in $(CIFAR_DATA_DIR)/cifar10: the CIFAR-10 track is left out and the report pools MNIST alone")
	@$(SLURM_SCRIPTS)/submit $(foreach t,$(PAPER_TRACKS),$($(t)_SLURM_DIR)/$(SLURM_NAME_$(t)).plan) --pooled $(PAPER_SLURM_DIR)/paper.plan

paper-status: paper-slurm-plan
	@$(SLURM_SCRIPTS)/status $(foreach t,$(PAPER_TRACKS),$($(t)_SLURM_DIR)/$(SLURM_NAME_$(t)).plan) --pooled $(PAPER_SLURM_DIR)/paper.plan

.PHONY: slurm-check
slurm-check:
	@$(SLURM_SCRIPTS)/submit --check

# With SCHEDULER=slurm the grids' public targets depend on their submission targets instead of
# the grids (grid_goal in grid.mk), and the build on this node waits for the controller check.
ifeq ($(SCHEDULER),slurm)
build: slurm-check
endif
