# make paper-cifar: ResNet-18 on CIFAR-10, probes on CIFAR-100 and Caltech-101. CIFAR-10 is not in
# ../shared/data: run `make data` (online) or point DATA_DIR at a copy.

CIFAR_OUT ?= $(RESULTS)/paper-cifar
CIFAR_WORK ?= $(OUT)/paper-cifar
CIFAR_DATA_DIR ?= $(DATA_DIR)
CIFAR_DATASET := cifar10
CIFAR_TRAIN_ARGS := --split train --arch resnet18
CIFAR_TEST_SPLIT := test
CIFAR_ALTER_ARGS :=
CIFAR_METHODS ?= $(METHODS)
CIFAR_DIMS ?= $(DIMS)
CIFAR_OPTIMIZERS ?= $(OPTIMIZERS)
CIFAR_SEEDS ?= $(SEEDS)
CIFAR_EPOCHS ?= $(or $(EPOCHS),100)
CIFAR_N_TEST ?= $(N_TEST)
CIFAR_NOISE_STEPS ?= 100
CIFAR_PGD_STEPS ?= 30
CIFAR_NOISE_SEED ?= 0
CIFAR_AUGMENT_VIEWS ?= 10
CIFAR_LIDAR_ARGS ?= --lidar-images 1000 --lidar-delta 1e-4 --lidar-eps 1e-8
CIFAR_PGD_VARIANT ?= $(PGD_VARIANT)
CIFAR_PGD_REFERENCE_N_TEST ?= $(or $(PGD_REFERENCE_N_TEST),$(CIFAR_N_TEST))
CIFAR_DOWNSTREAM := cifar100 caltech101
CIFAR_DS_cifar100_EMBED := --dataset cifar100 --split test
CIFAR_DS_cifar100_PROBE := --split 0.8 --seed 0 --knn 1,5 --linear
CIFAR_DS_caltech101_EMBED := --dataset caltech101 --split all
CIFAR_DS_caltech101_PROBE := --split 0.8 --seed 0 --knn 1,5 --linear
CIFAR_CORRELATE_ARGS ?=
# ResNet-18 on the project's 2-core machine: training about 34 images/s (batch 128), PGD steps
# about 61 images/s, embedding about 170 images/s: a walk of 1,000 images takes about 9 minutes.
CIFAR_EPOCH_SECONDS_LABELS ?= 1500
CIFAR_EPOCH_SECONDS_VIEWS ?= 3000
CIFAR_WALK_SECONDS_PER_1000 ?= 550
CIFAR_PROBE_SECONDS ?= 120
$(eval $(call GRID,CIFAR))

paper-cifar: $(call grid_goal,CIFAR)
