# make seeds-mnist: the seed study the paper does not have. The MNIST grid's settings at one
# dimension (SEEDS_DIMS, 64) and three seeds (SEEDS_SEEDS, 0 1 2): is a difference between two
# methods larger than the noise of retraining? Shares the MNIST grid's work folder, so the seed-0
# encoders it has already trained are not trained again.

SEEDMNIST_OUT ?= $(RESULTS)/seeds-mnist
SEEDMNIST_WORK ?= $(MNIST_WORK)
SEEDMNIST_SEEDS ?= $(or $(SEEDS_SEEDS),0 1 2)
SEEDMNIST_DIMS ?= $(or $(SEEDS_DIMS),64)
SEEDMNIST_METHODS ?= $(MNIST_METHODS)
SEEDMNIST_OPTIMIZERS ?= $(MNIST_OPTIMIZERS)
# Everything else as the MNIST grid.
$(foreach v,DATA_DIR DATASET TRAIN_ARGS TEST_SPLIT ALTER_ARGS EPOCHS N_TEST NOISE_STEPS PGD_STEPS \
  NOISE_SEED AUGMENT_VIEWS LIDAR_ARGS PGD_VARIANT PGD_REFERENCE_N_TEST PGD_EMIT NOISE_EMIT DOWNSTREAM CORRELATE_ARGS \
  EPOCH_SECONDS_LABELS EPOCH_SECONDS_VIEWS WALK_SECONDS_PER_1000 PROBE_SECONDS \
  $(foreach ds,$(MNIST_DOWNSTREAM),DS_$(ds)_EMBED DS_$(ds)_PROBE),$(eval SEEDMNIST_$(v) = $$(MNIST_$(v))))
$(eval $(call GRID,SEEDMNIST))

seeds-mnist: $(call grid_goal,SEEDMNIST)
seeds-mnist-report: SEEDMNIST-report
