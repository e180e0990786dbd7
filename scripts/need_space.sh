#!/usr/bin/env bash
# One clear line, instead of a full disk half-way through, when DIR's file system has less
# than GIB GiB free for WHAT. Usage: need_space.sh DIR GIB WHAT (DIR is created if missing).
set -euo pipefail
dir=$1 need=$2 what=$3
mkdir -p "$dir"
free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
if [ "$free_kib" -lt $((need * 1024 * 1024)) ]; then
  echo "only $((free_kib / 1024)) MiB free at $dir; $what needs about $need GiB: free some" \
       "space (sae-med prune CONFIG drops finished runs' checkpoints) and rerun" >&2
  exit 1
fi
