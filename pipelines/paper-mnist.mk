# make paper-mnist: LeNet-5 on MNIST, 5 methods x 6 dims x 2 optimizers + random-init baselines,
# noise and PGD walks of N_TEST test images, probes on KMNIST, Omniglot and Fashion-MNIST.

MNIST_OUT ?= $(RESULTS)/paper-mnist
MNIST_WORK ?= $(OUT)/paper-mnist
MNIST_DATA_DIR ?= $(DATA_DIR)
MNIST_DATASET := mnist
MNIST_TRAIN_ARGS := --split train --arch lenet5 --evaluate
MNIST_TEST_SPLIT := test
MNIST_ALTER_ARGS :=
MNIST_METHODS ?= $(METHODS)
MNIST_DIMS ?= $(DIMS)
MNIST_OPTIMIZERS ?= $(OPTIMIZERS)
MNIST_SEEDS ?= $(SEEDS)
MNIST_EPOCHS ?= $(or $(EPOCHS),7)
MNIST_N_TEST ?= $(N_TEST)
MNIST_NOISE_STEPS ?= 100
MNIST_PGD_STEPS ?= 30
MNIST_NOISE_SEED ?= 0
MNIST_AUGMENT_VIEWS ?= 10
MNIST_LIDAR_ARGS ?= --lidar-images 1000 --lidar-delta 1e-4 --lidar-eps 1e-8
MNIST_PGD_VARIANT ?= $(PGD_VARIANT)
MNIST_PGD_REFERENCE_N_TEST ?= $(or $(PGD_REFERENCE_N_TEST),$(MNIST_N_TEST))
# LeNet-5: PGD walks emit their embeddings (alter --emit embeddings), the same values as alter | embed.
MNIST_PGD_EMIT ?= yes
# Noise walks draw their noise and embed it in one process (alter --emit embeddings), the same values
# as embed reading the shared noise file.
MNIST_NOISE_EMIT ?= yes
MNIST_DOWNSTREAM := kmnist omniglot fashion
MNIST_DS_kmnist_EMBED := --dataset kmnist --split test
MNIST_DS_kmnist_PROBE := --split 0.8 --seed 0 --knn 1,5 --linear
MNIST_DS_omniglot_EMBED := --dataset omniglot --split background
# The paper leaves the Omniglot linear probe out (964 classes of 16 drawings: too hard to probe).
MNIST_DS_omniglot_PROBE := --split 0.8 --seed 0 --knn 1,5
MNIST_DS_fashion_EMBED := --dataset fashion-mnist --split test
MNIST_DS_fashion_PROBE := --split 0.8 --seed 0 --knn 1,5 --linear
MNIST_CORRELATE_ARGS ?=
# Stage times measured on the project's 2-core machine, for the estimate `make paper-mnist` prints
# (2026-12-02, idle, half the full grid: see README's Measured cost). The walk time per 1,000
# images is the mean of the noise and PGD walks with the augment walk folded in; a probe's includes
# embedding its downstream set.
MNIST_EPOCH_SECONDS_LABELS ?= 7.5
MNIST_EPOCH_SECONDS_VIEWS ?= 16.4
MNIST_WALK_SECONDS_PER_1000 ?= 5.4
MNIST_PROBE_SECONDS ?= 3.2
$(eval $(call GRID,MNIST))

paper-mnist: $(call grid_goal,MNIST)
paper-mnist-report: MNIST-report
