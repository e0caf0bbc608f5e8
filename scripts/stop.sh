#!/usr/bin/env bash
# `make stop`: stop the project cluster started by `make run`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cluster_stop "$ROOT/.cluster"
