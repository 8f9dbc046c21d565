# rmqm: measure representation-manifold quality and whether it predicts transfer.
#
#   make demo            the embedded default: offline, about 3 minutes after the build
#   make test            the test suite (what CI runs)
#   make paper-mnist     LeNet-5 on MNIST, the paper's grid (DATA_DIR=... or make data first)
#   make paper-cifar     ResNet-18 on CIFAR-10
#   make seeds-mnist     the seed study: the MNIST grid at dim 64 with seeds 0 1 2
#   make paper-mnist-report   the report again from the committed results/ (correlate only)
#   make paper           both tracks, then one report pooling them (RESULTS/paper/report)
#   make bench           every stage's benchmark in one table
#   make data            download the datasets (with checksums) into DATA_DIR
#
# Grid variables (paper-*): METHODS DIMS OPTIMIZERS EPOCHS N_TEST SEEDS PGD_VARIANT DATA_DIR OUT
# RESULTS. Small results (stats, curves, probes, reports) go to RESULTS (results/, committed),
# models and embeddings to OUT (out/). Reruns make only what is missing; `make -j2` is safe.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
# Models and embeddings are intermediate files made by pattern rules: pipelines/grid.mk keeps them
# with .PRECIOUS on each rule's own target pattern (a bare %.parquet here would not match those
# rules). Not .SECONDARY, which would also stop a deleted stats or probe file from being remade.

PROFILE ?= release
# Threads per tool: every core (0), or one when make runs jobs side by side (`make -j2`), where
# tools each using every core would contend. Recipes expand THREADS when they run, the only time
# MAKEFLAGS holds -j. Measured on 2 cores: two trainings with one thread each side by side, 1.6x the
# throughput of one after another with two; two noise walks, 1.3x (README, Measured cost).
jobs_side_by_side = $(filter-out -j1,$(filter -j%,$(MAKEFLAGS)))
THREADS ?= $(if $(jobs_side_by_side),1,0)
OUT ?= out
RESULTS ?= results
DATA_DIR ?= data
CARGO ?= cargo
BIN := target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
BUILD_STAMP := build

METHODS ?= cross-entropy triplet-entropy triplet-supervised triplet-ss ntxent
DIMS ?= 16 32 64 128 256 512
OPTIMIZERS ?= sgd adam
SEEDS ?= 0
N_TEST ?= 10000

.PHONY: all build test lint bench data demo demo-ci paper paper-mnist paper-cifar seeds-mnist paper-mnist-report seeds-mnist-report clean-demo help
all: help

help:
	@sed -n '2,16p' Makefile | sed 's/^# \{0,1\}//'

build:
	$(CARGO) build --profile $(PROFILE) --workspace --bins

test:
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

include pipelines/grid.mk
include pipelines/demo.mk
include pipelines/paper-mnist.mk
include pipelines/paper-cifar.mk
include pipelines/seeds-mnist.mk
include pipelines/paper.mk
include pipelines/bench.mk
include pipelines/data.mk

include pipelines/slurm.mk
