#!/bin/sh
# Forms the Redis Cluster of compose/docker-compose.cluster.yml, once: the one-shot service
# `redis-cluster-init` runs it (in the redis image) after every node is healthy, and the
# gateways and workers start only once it exited 0. scripts/check-ops.sh runs this same
# script against six local nodes.
#
#   REDIS_CLUSTER_NODES     space-separated host:port of every node (required)
#   REDIS_CLUSTER_REPLICAS  replicas per primary (default 1: six nodes are three shards)
#   REDIS_CLUSTER_WAIT_SECS how long to wait for the nodes and for cluster_state:ok (default 60)
#
# Idempotent: when every node is empty (knows only itself, serves no slot) it runs
# `redis-cli --cluster create`; when every node already belongs to a cluster (a restart of
# the stack) it only waits for cluster_state:ok; a mix (some node lost its volume) is an
# error for an operator: it needs `redis-cli --cluster add-node`, not a new cluster.
set -eu

nodes=${REDIS_CLUSTER_NODES:?REDIS_CLUSTER_NODES is not set (space-separated host:port)}
replicas=${REDIS_CLUSTER_REPLICAS:-1}
wait_secs=${REDIS_CLUSTER_WAIT_SECS:-60}

cli() {
  addr=$1
  shift
  redis-cli -h "${addr%:*}" -p "${addr##*:}" "$@"
}

# info_field NODE FIELD: one field of the node's CLUSTER INFO (empty when it does not answer).
info_field() {
  cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

deadline=$(($(date +%s) + wait_secs))
past_deadline() { [ "$(date +%s)" -gt "$deadline" ]; }

for node in $nodes; do
  until [ "$(cli "$node" ping 2>/dev/null)" = PONG ]; do
    if past_deadline; then
      echo "redis-cluster-init: $node does not answer PING" >&2
      exit 1
    fi
    sleep 1
  done
done

total=0
empty=0
created=no
for node in $nodes; do
  total=$((total + 1))
  enabled=$(cli "$node" info cluster | tr -d '\r' | sed -n 's/^cluster_enabled://p')
  if [ "$enabled" != 1 ]; then
    echo "redis-cluster-init: $node does not run with cluster-enabled yes" >&2
    exit 1
  fi
  known=$(info_field "$node" cluster_known_nodes)
  assigned=$(info_field "$node" cluster_slots_assigned)
  if [ "$known" = 1 ] && [ "$assigned" = 0 ]; then
    empty=$((empty + 1))
  else
    echo "redis-cluster-init: $node already in a cluster ($known known nodes, $assigned slots assigned)"
  fi
done

if [ "$empty" -eq "$total" ]; then
  echo "redis-cluster-init: creating the cluster of $total nodes, $replicas replica(s) per primary"
  # One argument per node: $nodes is split on purpose.
  # shellcheck disable=SC2086
  redis-cli --cluster create $nodes --cluster-replicas "$replicas" --cluster-yes
  created=yes
elif [ "$empty" -gt 0 ]; then
  echo "redis-cluster-init: $empty of $total nodes are empty while the others already form a" \
    "cluster (a node lost its volume?); not creating a new one. Add the empty node with" \
    "redis-cli --cluster add-node NEW:6379 EXISTING:6379 [--cluster-slave], or start over" \
    "with down --volumes (which deletes every order in Redis)." >&2
  exit 1
else
  echo "redis-cluster-init: the cluster exists; waiting for cluster_state:ok"
fi

for node in $nodes; do
  until [ "$(info_field "$node" cluster_state)" = ok ]; do
    if past_deadline; then
      echo "redis-cluster-init: $node says cluster_state:$(info_field "$node" cluster_state)" \
        "after ${wait_secs}s" >&2
      cli "$node" cluster info >&2 || true
      exit 1
    fi
    sleep 1
  done
done
# After creating it, also until every node sees each replica attached to its primary (redis-cli
# returns while that news is still spreading). On later starts cluster_state:ok is enough: a
# replica that is down must not keep the stack from serving.
if [ "$created" = yes ]; then
  want=$((total - total / (replicas + 1)))
  for node in $nodes; do
    until [ "$(cli "$node" cluster nodes 2>/dev/null |
      awk '$3 ~ /(^|,)slave(,|$)/ && $4 != "-" && $8 == "connected"' | wc -l)" -eq "$want" ]; do
      if past_deadline; then
        echo "redis-cluster-init: $node does not see $want attached replicas after ${wait_secs}s" >&2
        cli "$node" cluster nodes >&2 || true
        exit 1
      fi
      sleep 1
    done
  done
fi
# shellcheck disable=SC2086
set -- $nodes
first=$1
echo "redis-cluster-init: cluster_state:ok on all $total nodes;" \
  "$(info_field "$first" cluster_size) shards, $(info_field "$first" cluster_slots_ok) slots ok"
