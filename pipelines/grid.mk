# The experiment as a grid of file targets, one per artifact. A grid named G is configured by
# variables prefixed G_ (see demo.mk and paper-mnist.mk) and instantiated with
#   $(eval $(call GRID,G))
# which defines the rules below under $(G_OUT) and the targets G (the report) and G-plan.
#
# Model ids: <method>_d<dim>_<optimizer>_s<seed>; the random-init baseline: random_d<dim>_s<seed>.
# Per model: models/ID.safetensors, stats/ID-{noise,pgd}.parquet with curves/ID-{noise,pgd}.parquet
# (alter | embed | manifold-stats piped: no trajectory is stored), embeddings/ID-DS.parquet and
# probes/ID-DS.parquet per downstream set DS. Shared: altered/noise.parquet (every model sees the
# same noise). Then report/report.md from correlate.

# Words of a model id, split on '_'.
word_of = $(word $(1),$(subst _, ,$(2)))
dim_of = $(patsubst d%,%,$(call word_of,2,$(1)))
seed_of = $(patsubst s%,%,$(lastword $(subst _, ,$(1))))
is_baseline = $(filter random,$(call word_of,1,$(1)))

# Training arguments of a model id in grid $(1).
define train_args
$(if $(call is_baseline,$(2)),--method ntxent --epochs 0,--method $(call word_of,1,$(2)) --optimizer $(call word_of,3,$(2)) --epochs $($(1)_EPOCHS)) --dim $(call dim_of,$(2)) --seed $(call seed_of,$(2))
endef

define GRID
$(1)_MODELS := $$(foreach s,$$($(1)_SEEDS),$$(foreach d,$$($(1)_DIMS),random_d$$(d)_s$$(s) $$(foreach m,$$($(1)_METHODS),$$(foreach o,$$($(1)_OPTIMIZERS),$$(m)_d$$(d)_$$(o)_s$$(s)))))
$(1)_STATS := $$(foreach m,$$($(1)_MODELS),$$(foreach a,$$($(1)_ALTERATIONS),$$($(1)_OUT)/stats/$$(m)-$$(a).parquet))
$(1)_CURVES := $$(patsubst $$($(1)_OUT)/stats/%,$$($(1)_OUT)/curves/%,$$($(1)_STATS))
$(1)_PROBES := $$(foreach m,$$($(1)_MODELS),$$(foreach ds,$$($(1)_DOWNSTREAM),$$($(1)_OUT)/probes/$$(m)-$$(ds).parquet))

# The trained models are intermediate files of these pattern rules: keep them (.PRECIOUS has to
# name the rule's own target pattern; a bare %.safetensors does not protect them).
.PRECIOUS: $$($(1)_OUT)/models/%.safetensors
$$($(1)_OUT)/models/%.safetensors: | $(BUILD_STAMP)
	@mkdir -p $$(@D)
	$(BIN)/train-encoder --data-dir $$($(1)_DATA_DIR) --dataset $$($(1)_DATASET) $$($(1)_TRAIN_ARGS) $$(call train_args,$(1),$$*) --threads $(THREADS) -o $$@

$$($(1)_OUT)/altered/noise.parquet: | $(BUILD_STAMP)
	@mkdir -p $$(@D)
	$(BIN)/alter --method noise --data-dir $$($(1)_DATA_DIR) --dataset $$($(1)_DATASET) --split $$($(1)_TEST_SPLIT) $$($(1)_ALTER_ARGS) --limit $$($(1)_N_TEST) --steps $$($(1)_NOISE_STEPS) --seed $$($(1)_NOISE_SEED) --threads $(THREADS) -o $$@

$$($(1)_OUT)/stats/%-noise.parquet $$($(1)_OUT)/curves/%-noise.parquet &: $$($(1)_OUT)/models/%.safetensors $$($(1)_OUT)/altered/noise.parquet
	@mkdir -p $$($(1)_OUT)/stats $$($(1)_OUT)/curves
	$(BIN)/embed --model $$< --input $$($(1)_OUT)/altered/noise.parquet --threads $(THREADS) -o - \
	  | $(BIN)/manifold-stats - --convention both --threads $(THREADS) -o $$($(1)_OUT)/stats/$$*-noise.parquet --curves $$($(1)_OUT)/curves/$$*-noise.parquet

$$($(1)_OUT)/stats/%-pgd.parquet $$($(1)_OUT)/curves/%-pgd.parquet &: $$($(1)_OUT)/models/%.safetensors
	@mkdir -p $$($(1)_OUT)/stats $$($(1)_OUT)/curves
	$(BIN)/alter --method pgd --model $$< --data-dir $$($(1)_DATA_DIR) --dataset $$($(1)_DATASET) --split $$($(1)_TEST_SPLIT) $$($(1)_ALTER_ARGS) --limit $$($(1)_N_TEST) --steps $$($(1)_PGD_STEPS) --seed $$($(1)_NOISE_SEED) --threads $(THREADS) -o - \
	  | $(BIN)/embed --model $$< --input - --threads $(THREADS) -o - \
	  | $(BIN)/manifold-stats - --convention both --threads $(THREADS) -o $$($(1)_OUT)/stats/$$*-pgd.parquet --curves $$($(1)_OUT)/curves/$$*-pgd.parquet

$$(foreach ds,$$($(1)_DOWNSTREAM),$$(eval $$(call DOWNSTREAM,$(1),$$(ds))))

$$($(1)_OUT)/report/report.md: $$($(1)_STATS) $$($(1)_CURVES) $$($(1)_PROBES)
	@mkdir -p $$(@D)
	$(BIN)/correlate --stats $$($(1)_STATS) --probes $$($(1)_PROBES) --curves $$($(1)_CURVES) $$($(1)_CORRELATE_ARGS) --threads $(THREADS) -o $$(@D)

.PHONY: $(1) $(1)-plan
$(1): $(1)-plan $$($(1)_OUT)/report/report.md
	@echo "$(1): report in $$($(1)_OUT)/report/report.md"

$(1)-plan:
	@echo "$(1): $$(words $$($(1)_MODELS)) encoders ($$(words $$($(1)_METHODS)) methods x $$(words $$($(1)_DIMS)) dims x $$(words $$($(1)_OPTIMIZERS)) optimizers + $$(words $$($(1)_DIMS)) random-init baselines, x $$(words $$($(1)_SEEDS)) seeds), $$($(1)_EPOCHS) epochs on $$($(1)_DATASET)"
	@echo "$(1): $$(words $$($(1)_STATS)) walks of $$($(1)_N_TEST) images ($$($(1)_ALTERATIONS)), $$(words $$($(1)_PROBES)) probes ($$($(1)_DOWNSTREAM)), then correlate into $$($(1)_OUT)/report"
	@todo=$$$$(for f in $$($(1)_OUT)/report/report.md $$($(1)_STATS) $$($(1)_PROBES); do [ -e $$$$f ] || echo x; done | wc -l); echo "$(1): $$$$todo of $$(words $$($(1)_STATS) $$($(1)_PROBES) x) targets to make"
	@awk -v label=$$(words $$(filter cross-entropy triplet-entropy triplet-supervised,$$($(1)_METHODS))) -v views=$$(words $$(filter triplet-ss ntxent,$$($(1)_METHODS))) \
	  -v per=$$$$(( $$(words $$($(1)_DIMS)) * $$(words $$($(1)_OPTIMIZERS)) * $$(words $$($(1)_SEEDS)) )) -v models=$$(words $$($(1)_MODELS)) \
	  -v epochs=$$($(1)_EPOCHS) -v el=$$($(1)_EPOCH_SECONDS_LABELS) -v ev=$$($(1)_EPOCH_SECONDS_VIEWS) \
	  -v walks=$$(words $$($(1)_ALTERATIONS)) -v ntest=$$($(1)_N_TEST) -v ws=$$($(1)_WALK_SECONDS_PER_1000) \
	  -v probes=$$(words $$($(1)_DOWNSTREAM)) -v ps=$$($(1)_PROBE_SECONDS) \
	  'BEGIN { t = per * epochs * (label * el + views * ev) + models * (walks * ntest / 1000 * ws + probes * ps); \
	      u = t < 3600 ? sprintf("%.0f minutes", t / 60) : sprintf("%.1f hours", t / 3600); \
	      printf "$(1): about %s of work if nothing is made yet (stage times measured on a 2-core Zen 4)\n", u }'
endef

# Embeddings and probe results of one downstream set $(2) of grid $(1). The set is configured by
# $(1)_DS_$(2)_EMBED (embed's dataset arguments) and $(1)_DS_$(2)_PROBE (probe's arguments).
define DOWNSTREAM
# Kept after the run (make names a pattern rule's target pattern in .PRECIOUS, not any pattern).
.PRECIOUS: $$($(1)_OUT)/embeddings/%-$(2).parquet
$$($(1)_OUT)/embeddings/%-$(2).parquet: $$($(1)_OUT)/models/%.safetensors
	@mkdir -p $$(@D)
	$(BIN)/embed --model $$< --data-dir $$($(1)_DATA_DIR) $$($(1)_DS_$(2)_EMBED) --threads $(THREADS) -o $$@

$$($(1)_OUT)/probes/%-$(2).parquet: $$($(1)_OUT)/embeddings/%-$(2).parquet
	@mkdir -p $$(@D)
	$(BIN)/probe --input $$< --downstream $(2) $$($(1)_DS_$(2)_PROBE) --threads $(THREADS) -o $$@
endef
