# make demo: the embedded default. Fashion-MNIST subset from Debian's package (data/demo/): encoders
# pretrained on classes 0-4, walked on test images of those classes, probed on held-out classes 5-9.

DEMO_OUT ?= $(OUT)/demo
DEMO_WORK ?= $(DEMO_OUT)
DEMO_DATA_DIR := data/demo
DEMO_DATASET := fashion-mnist
DEMO_TRAIN_ARGS := --split train --classes 0,1,2,3,4 --batch-size 64 --accumulate 1
DEMO_TEST_SPLIT := test
DEMO_ALTER_ARGS := --classes 0,1,2,3,4
DEMO_METHODS ?= cross-entropy triplet-entropy triplet-supervised triplet-ss ntxent
DEMO_DIMS ?= 16 64
DEMO_OPTIMIZERS ?= adam
DEMO_SEEDS ?= 0
DEMO_EPOCHS ?= 3
DEMO_N_TEST ?= 200
DEMO_NOISE_STEPS ?= 100
DEMO_PGD_STEPS ?= 30
DEMO_NOISE_SEED ?= 0
DEMO_AUGMENT_VIEWS ?= 10
DEMO_LIDAR_ARGS ?= --lidar-images 1000 --lidar-delta 1e-4 --lidar-eps 1e-8
DEMO_PGD_VARIANT ?= $(PGD_VARIANT)
DEMO_PGD_REFERENCE_N_TEST ?= $(or $(PGD_REFERENCE_N_TEST),$(DEMO_N_TEST))
# LeNet-5: PGD walks emit their embeddings (alter --emit embeddings), the same values as alter | embed.
DEMO_PGD_EMIT ?= yes
# Noise walks draw their noise and embed it in one process (alter --emit embeddings), the same values
# as embed reading the shared noise file.
DEMO_NOISE_EMIT ?= yes
DEMO_DOWNSTREAM := heldout
DEMO_DS_heldout_EMBED := --dataset fashion-mnist --split train --classes 5,6,7,8,9
DEMO_DS_heldout_PROBE := --split 0.8 --seed 0 --knn 1,5 --linear
DEMO_CORRELATE_ARGS ?= --resamples 2000
DEMO_EPOCH_SECONDS_LABELS ?= 0.3
DEMO_EPOCH_SECONDS_VIEWS ?= 0.6
DEMO_WALK_SECONDS_PER_1000 ?= 2.5
DEMO_PROBE_SECONDS ?= 0.5
$(eval $(call GRID,DEMO))

demo: $(call grid_goal,DEMO)
	@echo "demo: open $(DEMO_OUT)/report/report.md"

# CI's reduced demo: fewer encoders and images, same six tools, checked for the report and figures.
demo-ci:
	$(MAKE) DEMO DEMO_OUT=$(OUT)/demo-ci DEMO_METHODS="cross-entropy triplet-ss ntxent" DEMO_DIMS=16 DEMO_EPOCHS=1 DEMO_N_TEST=40 DEMO_NOISE_STEPS=20 DEMO_PGD_STEPS=6 DEMO_CORRELATE_ARGS="--resamples 200"
	test -s $(OUT)/demo-ci/report/report.md
	test -s $(OUT)/demo-ci/report/correlations.parquet
	for f in fig2_distance_noise fig3_distance_pgd fig4_relative_change_noise fig5_rmqm_by_dim_adam fig6_rmqm_vs_knn; do \
	  test -s $(OUT)/demo-ci/report/$$f.png && test -s $(OUT)/demo-ci/report/$$f.svg || { echo "missing figure $$f"; exit 1; }; done
	@echo "demo-ci: report and figures present in $(OUT)/demo-ci/report"

clean-demo:
	rm -rf $(DEMO_OUT) $(OUT)/demo-ci
