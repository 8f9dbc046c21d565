# The experiment as a grid of file targets, one per artifact. A grid named G is configured by
# variables prefixed G_ (see demo.mk and paper-mnist.mk) and instantiated with
#   $(eval $(call GRID,G))
# which defines the rules below and the targets G (the report), G-plan and G-check-config.
#
# Two folders per grid:
# - G_OUT, the small results a rerun resumes from (results/ for the paper grids, committed):
#   stats/ID-WALK.parquet, curves/ID-WALK.parquet, probes/ID-DS.parquet, report/, grid-config.txt.
# - G_WORK, the large intermediates (out/): models/ID.safetensors, altered/augment.parquet and,
#   unless the grid's noise walks draw their own noise (G_NOISE_EMIT), altered/noise.parquet
#   (shared by every encoder), embeddings/ID-DS.parquet.
# Models, altered images and embeddings are intermediate files: when a model's stats, curves and
# probes exist, a missing model is not retrained (GNU make does not remake a missing intermediate
# whose targets are up to date), so a fresh clone with results/ makes only the encoders that lack
# them. The shared altered files are order-only prerequisites: making one again for a new encoder
# does not make every other encoder's stats out of date.
#
# Model ids: <method>_d<dim>_<optimizer>_s<seed>; the random-init baseline: random_d<dim>_s<seed>.
# Walks: noise and pgd (stats + curves; trajectories are never stored: embed | manifold-stats
# and alter | embed | manifold-stats run as pipes; with G_NOISE_EMIT = yes, the LeNet grids, the
# noise walk is alter --emit embeddings | manifold-stats, each walk drawing the shared file's noise
# itself instead of decoding 2 GB of it; with G_PGD_EMIT = yes, the LeNet grids,
# alter --emit embeddings | manifold-stats: PGD's embeddings come from the walk's own forward
# passes, bit for bit those of alter | embed while embed's passes have at least the rows
# Encoder::row_invariant_rows names: its 256 and the last of 10,000 x 31 rows, 240, do; ResNet's are
# not checked for that), augment (stats with LiDAR, from the shared augment walk), and
# pgd-reference (the authors' PGD walk) when G_PGD_VARIANT is reference.

# What a grid's public target (demo, paper-mnist, ...) makes: the grid here, or with
# SCHEDULER=slurm its submission to Slurm (pipelines/slurm.mk).
grid_goal = $(if $(filter slurm,$(SCHEDULER)),$(1)-slurm-submit,build $(1))

# Words of a model id, split on '_'.
word_of = $(word $(1),$(subst _, ,$(2)))
dim_of = $(patsubst d%,%,$(call word_of,2,$(1)))
seed_of = $(patsubst s%,%,$(lastword $(subst _, ,$(1))))
is_baseline = $(filter random,$(call word_of,1,$(1)))

# Training arguments of a model id in grid $(1).
define train_args
$(if $(call is_baseline,$(2)),--method ntxent --epochs 0,--method $(call word_of,1,$(2)) --optimizer $(call word_of,3,$(2)) --epochs $($(1)_EPOCHS)) --dim $(call dim_of,$(2)) --seed $(call seed_of,$(2))
endef

# Everything that changes one encoder's results in grid $(1): a results folder made with other
# settings is refused instead of being mixed in (subsets of METHODS, DIMS, OPTIMIZERS and SEEDS
# are fine: they change which encoders exist, not what one encoder's files hold).
define grid_config
dataset=$($(1)_DATASET) train=$($(1)_TRAIN_ARGS) epochs=$($(1)_EPOCHS) test_split=$($(1)_TEST_SPLIT) alter=$($(1)_ALTER_ARGS) n_test=$($(1)_N_TEST) noise_steps=$($(1)_NOISE_STEPS) pgd_steps=$($(1)_PGD_STEPS) walk_seed=$($(1)_NOISE_SEED) views=$($(1)_AUGMENT_VIEWS) lidar=$($(1)_LIDAR_ARGS) $(foreach ds,$($(1)_DOWNSTREAM),$(ds)=[$($(1)_DS_$(ds)_EMBED) $($(1)_DS_$(ds)_PROBE)])
endef

# The noise walk's alter arguments in grid $(1): the shared noise file and the walks that draw their
# noise themselves (G_NOISE_EMIT) draw the same images.
noise_args = --method noise --data-dir $($(1)_DATA_DIR) --dataset $($(1)_DATASET) --split $($(1)_TEST_SPLIT) $($(1)_ALTER_ARGS) --limit $($(1)_N_TEST) --steps $($(1)_NOISE_STEPS) --seed $($(1)_NOISE_SEED)

# The command of a noise walk in grid $(1) that puts its trajectories on stdout (in a recipe: $< is
# the model): alter drawing the noise and embedding it with the model, or embed reading the shared
# noise file.
define noise_embeddings
$(if $(filter yes,$($(1)_NOISE_EMIT)),$(BIN)/alter $(call noise_args,$(1)) --model $< --emit embeddings --threads $(THREADS) -o -,$(BIN)/embed --model $< --input $($(1)_WORK)/altered/noise.parquet --threads $(THREADS) -o -)
endef

# What a noise walk in grid $(1) waits for: the shared noise file, unless it draws its own noise.
noise_walk_needs = $(if $(filter yes,$($(1)_NOISE_EMIT)),$($(1)_BEFORE),$($(1)_WORK)/altered/noise.parquet)

# The end of a PGD walk's alter command in grid $(1) that puts its trajectories on stdout: emitted
# by alter itself, or piped through embed (in a recipe: $< is the model).
define pgd_embeddings
$(if $(filter yes,$($(1)_PGD_EMIT)),--emit embeddings -o -,-o - | $(BIN)/embed --model $< --input - --threads $(THREADS) -o -)
endef

define GRID
$(1)_WALKS := noise pgd $$(if $$(filter reference,$$($(1)_PGD_VARIANT)),pgd-reference)
$(1)_MODELS := $$(foreach s,$$($(1)_SEEDS),$$(foreach d,$$($(1)_DIMS),random_d$$(d)_s$$(s) $$(foreach m,$$($(1)_METHODS),$$(foreach o,$$($(1)_OPTIMIZERS),$$(m)_d$$(d)_$$(o)_s$$(s)))))
$(1)_CURVES := $$(foreach m,$$($(1)_MODELS),$$(foreach a,$$($(1)_WALKS),$$($(1)_OUT)/curves/$$(m)-$$(a).parquet))
$(1)_STATS := $$(patsubst $$($(1)_OUT)/curves/%,$$($(1)_OUT)/stats/%,$$($(1)_CURVES)) $$(foreach m,$$($(1)_MODELS),$$($(1)_OUT)/stats/$$(m)-augment.parquet)
$(1)_PROBES := $$(foreach m,$$($(1)_MODELS),$$(foreach ds,$$($(1)_DOWNSTREAM),$$($(1)_OUT)/probes/$$(m)-$$(ds).parquet))
$(1)_CONFIG_FILE := $$($(1)_OUT)/grid-config.txt
$(1)_BEFORE := $(BUILD_STAMP) $(1)-check-config

# Trained models, altered images and embeddings are kept after the run (.PRECIOUS has to name a
# pattern rule's own target pattern) and are intermediate (.SECONDARY for the explicit ones).
.PRECIOUS: $$($(1)_WORK)/models/%.safetensors
.SECONDARY: $$($(1)_WORK)/altered/noise.parquet $$($(1)_WORK)/altered/augment.parquet
$$($(1)_WORK)/models/%.safetensors: | $$($(1)_BEFORE)
	@mkdir -p $$(@D)
	$(BIN)/train-encoder --data-dir $$($(1)_DATA_DIR) --dataset $$($(1)_DATASET) $$($(1)_TRAIN_ARGS) $$(call train_args,$(1),$$*) --threads $$(THREADS) -o $$@

# The shared walks, once per work folder (grids that share one, like paper-mnist and seeds-mnist,
# share their models and walks).
ifeq ($$(filter $$($(1)_WORK),$$(GRID_WORK_DIRS)),)
GRID_WORK_DIRS += $$($(1)_WORK)
$$($(1)_WORK)/altered/noise.parquet: | $$($(1)_BEFORE)
	@mkdir -p $$(@D)
	$(BIN)/alter $$(call noise_args,$(1)) --threads $$(THREADS) -o $$@

$$($(1)_WORK)/altered/augment.parquet: | $$($(1)_BEFORE)
	@mkdir -p $$(@D)
	$(BIN)/alter --method augment --data-dir $$($(1)_DATA_DIR) --dataset $$($(1)_DATASET) --split $$($(1)_TEST_SPLIT) $$($(1)_ALTER_ARGS) --limit $$($(1)_N_TEST) --views $$($(1)_AUGMENT_VIEWS) --seed $$($(1)_NOISE_SEED) --threads $$(THREADS) -o $$@
endif

$$($(1)_OUT)/stats/%-noise.parquet $$($(1)_OUT)/curves/%-noise.parquet &: $$($(1)_WORK)/models/%.safetensors | $$(call noise_walk_needs,$(1))
	@mkdir -p $$($(1)_OUT)/stats $$($(1)_OUT)/curves
	$$(call noise_embeddings,$(1)) \
	  | $(BIN)/manifold-stats - --convention both --threads $$(THREADS) -o $$($(1)_OUT)/stats/$$*-noise.parquet --curves $$($(1)_OUT)/curves/$$*-noise.parquet

$$($(1)_OUT)/stats/%-pgd.parquet $$($(1)_OUT)/curves/%-pgd.parquet &: $$($(1)_WORK)/models/%.safetensors | $$($(1)_BEFORE)
	@mkdir -p $$($(1)_OUT)/stats $$($(1)_OUT)/curves
	$(BIN)/alter --method pgd --model $$< --data-dir $$($(1)_DATA_DIR) --dataset $$($(1)_DATASET) --split $$($(1)_TEST_SPLIT) $$($(1)_ALTER_ARGS) --limit $$($(1)_N_TEST) --steps $$($(1)_PGD_STEPS) --seed $$($(1)_NOISE_SEED) --threads $$(THREADS) $$(call pgd_embeddings,$(1)) \
	  | $(BIN)/manifold-stats - --convention both --threads $$(THREADS) -o $$($(1)_OUT)/stats/$$*-pgd.parquet --curves $$($(1)_OUT)/curves/$$*-pgd.parquet

$$($(1)_OUT)/stats/%-pgd-reference.parquet $$($(1)_OUT)/curves/%-pgd-reference.parquet &: $$($(1)_WORK)/models/%.safetensors | $$($(1)_BEFORE)
	@mkdir -p $$($(1)_OUT)/stats $$($(1)_OUT)/curves
	$(BIN)/alter --method pgd --preset reference --model $$< --data-dir $$($(1)_DATA_DIR) --dataset $$($(1)_DATASET) --split $$($(1)_TEST_SPLIT) $$($(1)_ALTER_ARGS) --limit $$($(1)_PGD_REFERENCE_N_TEST) --steps $$($(1)_PGD_STEPS) --seed $$($(1)_NOISE_SEED) --threads $$(THREADS) $$(call pgd_embeddings,$(1)) \
	  | $(BIN)/manifold-stats - --convention both --threads $$(THREADS) -o $$($(1)_OUT)/stats/$$*-pgd-reference.parquet --curves $$($(1)_OUT)/curves/$$*-pgd-reference.parquet

$$($(1)_OUT)/stats/%-augment.parquet: $$($(1)_WORK)/models/%.safetensors | $$($(1)_WORK)/altered/augment.parquet
	@mkdir -p $$(@D)
	$(BIN)/embed --model $$< --input $$($(1)_WORK)/altered/augment.parquet --threads $$(THREADS) -o - \
	  | $(BIN)/manifold-stats - --convention paper $$($(1)_LIDAR_ARGS) --threads $$(THREADS) -o $$@

$$(foreach ds,$$($(1)_DOWNSTREAM),$$(eval $$(call DOWNSTREAM,$(1),$$(ds))))

$$($(1)_OUT)/report/report.md: $$($(1)_STATS) $$($(1)_CURVES) $$($(1)_PROBES) | $(1)-check-config
	@mkdir -p $$(@D)
	$(BIN)/correlate --stats $$($(1)_STATS) --probes $$($(1)_PROBES) --curves $$($(1)_CURVES) $$($(1)_CORRELATE_ARGS) --threads $$(THREADS) -o $$(@D)

# The report again from the stats, curves and probes already in G_OUT (a fresh clone's committed
# results): correlate alone, nothing is trained or walked.
.PHONY: $(1)-report
$(1)-report: | $(BUILD_STAMP)
	@mkdir -p $$($(1)_OUT)/report
	$(BIN)/correlate --stats $$(wildcard $$($(1)_STATS)) --probes $$(wildcard $$($(1)_PROBES)) --curves $$(wildcard $$($(1)_CURVES)) $$($(1)_CORRELATE_ARGS) --threads $$(THREADS) -o $$($(1)_OUT)/report

# The results folder records the settings it was made with; other settings are refused.
.PHONY: $(1) $(1)-plan $(1)-check-config
$(1)-check-config:
	@mkdir -p $$($(1)_OUT)
	@want='$$(strip $$(call grid_config,$(1)))'; \
	if [ -e $$($(1)_CONFIG_FILE) ]; then \
	  have=$$$$(cat $$($(1)_CONFIG_FILE)); \
	  if [ "$$$$have" != "$$$$want" ]; then \
	    echo "$(1): $$($(1)_OUT) holds results made with other settings:"; echo "  had:  $$$$have"; echo "  now:  $$$$want"; \
	    echo "$(1): give this run its own folder (e.g. RESULTS=out/results) or delete $$($(1)_OUT)"; exit 1; fi; \
	else echo "$$$$want" > $$($(1)_CONFIG_FILE); fi

$(1): $(1)-plan $$($(1)_OUT)/report/report.md
	@echo "$(1): report in $$($(1)_OUT)/report/report.md"

$(1)-plan:
	@echo "$(1): $$(words $$($(1)_MODELS)) encoders ($$(words $$($(1)_METHODS)) methods x $$(words $$($(1)_DIMS)) dims x $$(words $$($(1)_OPTIMIZERS)) optimizers + $$(words $$($(1)_DIMS)) random-init baselines, x $$(words $$($(1)_SEEDS)) seeds), $$($(1)_EPOCHS) epochs on $$($(1)_DATASET)"
	@echo "$(1): $$(words $$($(1)_STATS)) walks of $$($(1)_N_TEST) images ($$($(1)_WALKS) augment), $$(words $$($(1)_PROBES)) probes ($$($(1)_DOWNSTREAM)), then correlate into $$($(1)_OUT)/report"
	@todo=$$$$(for f in $$($(1)_OUT)/report/report.md $$($(1)_STATS) $$($(1)_PROBES); do [ -e $$$$f ] || echo x; done | wc -l); echo "$(1): $$$$todo of $$(words $$($(1)_STATS) $$($(1)_PROBES) x) targets to make"
	@awk -v label=$$(words $$(filter cross-entropy triplet-entropy triplet-supervised,$$($(1)_METHODS))) -v views=$$(words $$(filter triplet-ss ntxent,$$($(1)_METHODS))) \
	  -v per=$$$$(( $$(words $$($(1)_DIMS)) * $$(words $$($(1)_OPTIMIZERS)) * $$(words $$($(1)_SEEDS)) )) -v models=$$(words $$($(1)_MODELS)) \
	  -v epochs=$$($(1)_EPOCHS) -v el=$$($(1)_EPOCH_SECONDS_LABELS) -v ev=$$($(1)_EPOCH_SECONDS_VIEWS) \
	  -v walks=$$(words $$($(1)_WALKS)) -v ntest=$$($(1)_N_TEST) -v ws=$$($(1)_WALK_SECONDS_PER_1000) \
	  -v probes=$$(words $$($(1)_DOWNSTREAM)) -v ps=$$($(1)_PROBE_SECONDS) \
	  'BEGIN { t = per * epochs * (label * el + views * ev) + models * (walks * ntest / 1000 * ws + probes * ps); \
	      u = t < 3600 ? sprintf("%.0f minutes", t / 60) : sprintf("%.1f hours", t / 3600); \
	      printf "$(1): about %s of work if nothing is made yet (stage times measured on a 2-core Zen 4)\n", u }'
endef

# Embeddings and probe results of one downstream set $(2) of grid $(1). The set is configured by
# $(1)_DS_$(2)_EMBED (embed's dataset arguments) and $(1)_DS_$(2)_PROBE (probe's arguments).
define DOWNSTREAM
# Kept after the run (make names a pattern rule's target pattern in .PRECIOUS, not any pattern).
.PRECIOUS: $$($(1)_WORK)/embeddings/%-$(2).parquet
$$($(1)_WORK)/embeddings/%-$(2).parquet: $$($(1)_WORK)/models/%.safetensors
	@mkdir -p $$(@D)
	$(BIN)/embed --model $$< --data-dir $$($(1)_DATA_DIR) $$($(1)_DS_$(2)_EMBED) --threads $$(THREADS) -o $$@

$$($(1)_OUT)/probes/%-$(2).parquet: $$($(1)_WORK)/embeddings/%-$(2).parquet
	@mkdir -p $$(@D)
	$(BIN)/probe --input $$< --downstream $(2) $$($(1)_DS_$(2)_PROBE) --threads $$(THREADS) -o $$@
endef
