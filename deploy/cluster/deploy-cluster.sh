#!/usr/bin/env bash
# deploy-cluster.sh — writes everything each membershipd node of a cluster needs: a cluster CA,
# per-node client-port and route certificates, per-node internal identity files, the shared route
# password file, and each node's cluster.env for membershipd-cluster.service.
#
# Idempotent: existing CA, certificates, identities and the route password are kept (re-running never
# rotates a secret; delete a file on purpose to replace it). cluster.env is rewritten from the inputs
# (a joiner keeps its INITIAL_CLUSTER_STATE=existing, see --join).
#
# Usage:
#   deploy-cluster.sh --out DIR [options] NAME=ADDRESS[/NATS_PORT,ROUTE_PORT,HTTP_PORT] ...
# Options:
#   --out DIR            where the files are written: DIR/ca/ and DIR/<NAME>/ (required)
#   --kv-replicas R      Raft voters (default: 3, or the count of nodes not --join when smaller; never above
#                        the node count)
#   --cluster-name NAME  (default unibus)
#   --cluster-user USER  route user (default route)
#   --nats-port P        default client port (4222); --route-port P (6222); --http-port P (8222)
#   --install-dir PATH   where the node's files live on the node, as written into cluster.env
#                        (default /opt/unibus; "{name}" is replaced by the node name)
#   --membershipd CMD    how to run membershipd here for certs/id (default: membershipd on PATH)
#   --join NAME          NAME joins a running cluster: its cluster.env gets INITIAL_CLUSTER_STATE=existing
#                        (repeatable). Register it first with `membershipd cluster add NAME URL` on a member.
#                        A node whose cluster.env already says existing stays joining on later runs.
# Per-node ports after a slash let several nodes share one address (a test or dev host).
# Adding a node: re-run with the same arguments plus NEW=ADDRESS --join NEW (RUNBOOK "Adding a node").
set -euo pipefail

die() { echo "deploy-cluster.sh: $*" >&2; exit 2; }

out="" replicas="" cluster_name="unibus" cluster_user="route"
nats_port=4222 route_port=6222 http_port=8222 install_dir="/opt/unibus" mship="membershipd"
nodes=() joins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --kv-replicas) replicas="${2:?--kv-replicas needs a number}"; shift 2 ;;
    --cluster-name) cluster_name="${2:?--cluster-name needs a value}"; shift 2 ;;
    --cluster-user) cluster_user="${2:?--cluster-user needs a value}"; shift 2 ;;
    --nats-port) nats_port="${2:?--nats-port needs a port}"; shift 2 ;;
    --route-port) route_port="${2:?--route-port needs a port}"; shift 2 ;;
    --http-port) http_port="${2:?--http-port needs a port}"; shift 2 ;;
    --install-dir) install_dir="${2:?--install-dir needs a path}"; shift 2 ;;
    --membershipd) mship="${2:?--membershipd needs a command}"; shift 2 ;;
    --join) joins+=("${2:?--join needs a node name}"); shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*) die "unknown option $1 (see --help)" ;;
    *) nodes+=("$1"); shift ;;
  esac
done
[ -n "$out" ] || die "--out DIR is required"
[ ${#nodes[@]} -gt 0 ] || die "no nodes given: pass NAME=ADDRESS for each node"

is_port() { [[ "$1" =~ ^[0-9]{1,5}$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
is_ipv4() {
  [[ "$1" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || return 1
  for o in "${BASH_REMATCH[@]:1}"; do [ "$o" -le 255 ] || return 1; done
}
is_ipv6() { [[ "$1" =~ ^[0-9A-Fa-f:.]+$ ]] && [[ "$1" == *:* ]]; }
is_dns() { [[ "$1" =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$ ]] && ! [[ "$1" =~ ^[0-9.]+$ ]]; }
for p in "$nats_port" "$route_port" "$http_port"; do is_port "$p" || die "port \"$p\" is not a port number (1-65535)"; done
[[ "$cluster_name" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "--cluster-name \"$cluster_name\": 1-64 of letters, digits, '_' or '-'"
[[ "$cluster_user" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "--cluster-user \"$cluster_user\": 1-64 of letters, digits, '_' or '-'"

names=() addrs=() nports=() rports=() hports=()
declare -A seen_name=() seen_endpoint=()
for spec in "${nodes[@]}"; do
  [[ "$spec" == *=* ]] || die "node \"$spec\" is not NAME=ADDRESS"
  name="${spec%%=*}" rest="${spec#*=}"
  ports="" addr="$rest"
  if [[ "$rest" == */* ]]; then addr="${rest%%/*}" ports="${rest#*/}"; fi
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] || die "node name \"$name\": 1-63 of letters, digits, '_', '.', '-', starting with a letter or digit"
  [ -z "${seen_name[$name]:-}" ] || die "duplicate node name \"$name\": each node needs its own name"
  seen_name[$name]=1
  addr="${addr#[}" addr="${addr%]}"
  is_ipv4 "$addr" || is_ipv6 "$addr" || is_dns "$addr" || die "node \"$name\": \"$addr\" is not an IP address or a DNS name"
  np="$nats_port" rp="$route_port" hp="$http_port"
  if [ -n "$ports" ]; then
    IFS=, read -r np rp hp extra <<<"$ports"
    [ -z "${extra:-}" ] && is_port "${np:-x}" && is_port "${rp:-x}" && is_port "${hp:-x}" \
      || die "node \"$name\": \"/$ports\" must be /NATS_PORT,ROUTE_PORT,HTTP_PORT"
  fi
  for ep in "$addr:$np" "$addr:$rp" "$addr:$hp"; do
    [ -z "${seen_endpoint[$ep]:-}" ] || die "node \"$name\": $ep is used twice; give nodes on one address distinct ports"
    seen_endpoint[$ep]=1
  done
  names+=("$name") addrs+=("$addr") nports+=("$np") rports+=("$rp") hports+=("$hp")
done
count=${#names[@]}

# Join mode per node. Nodes that form the cluster get no INITIAL_CLUSTER_STATE line: the unit defaults it to new,
# so their cluster.env stays byte for byte what this script wrote before the variable existed (a re-run on an
# existing deployment changes nothing for them). A joiner's line is sticky: a node added with `cluster add` has a
# slot that is not in the ROUTES the cluster formed from, so starting it (wiped) as "new" would be wrong, and
# forgetting --join on a later run (adding another node) must not turn it back.
declare -A joining=()
for j in "${joins[@]}"; do
  [ -n "${seen_name[$j]:-}" ] || die "--join \"$j\": no such node among the NAME=ADDRESS arguments (list every node, the joining one too)"
  joining[$j]=1
done
for name in "${names[@]}"; do
  if [ -f "$out/$name/cluster.env" ] && grep -qx 'INITIAL_CLUSTER_STATE=existing' "$out/$name/cluster.env"; then joining[$name]=1; fi
done
[ ${#joining[@]} -lt "$count" ] || die "every node is marked --join: a joining node dials running members, so list the cluster's nodes too (they form it with INITIAL_CLUSTER_STATE=new)"
# The default R counts the nodes the cluster forms from, not joiners: adding a node to a 2-node cluster must not
# write KV_REPLICAS=3 (the formed cluster has R2; change R live with `membershipd cluster kv-replicas`).
formers=$(( count - ${#joining[@]} ))
if [ -z "$replicas" ]; then replicas=$(( formers < 3 ? formers : 3 )); fi
[[ "$replicas" =~ ^[0-9]+$ ]] && [ "$replicas" -ge 1 ] || die "--kv-replicas \"$replicas\" is not a positive number"
[ "$replicas" -le "$count" ] || die "--kv-replicas $replicas is above the node count $count: a cluster cannot have more voters than nodes"
[ "$replicas" -ne 1 ] || [ "$count" -eq 1 ] || echo "deploy-cluster.sh: warning: --kv-replicas 1 is a single point of failure; use 3" >&2

run() { # runs membershipd quietly; its own message explains a failure
  # shellcheck disable=SC2086
  $mship "$@" >/dev/null || die "membershipd $1 $2 failed (see the message above)"
}

umask 077
mkdir -p "$out/ca"
run certs ca --out "$out/ca" --name "$cluster_name-ca"

route_url() { local a="$1"; [[ "$a" == *:* ]] && a="[$a]"; echo "nats-route://$a:$2"; }
routes=""
for i in "${!names[@]}"; do routes+="${routes:+,}$(route_url "${addrs[$i]}" "${rports[$i]}")"; done

pass_file="$out/ca/route.pass"
if [ ! -s "$pass_file" ]; then
  head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_' > "$pass_file.tmp"
  chmod 600 "$pass_file.tmp" && mv "$pass_file.tmp" "$pass_file"
fi

for i in "${!names[@]}"; do
  name="${names[$i]}" addr="${addrs[$i]}"
  dir="$out/$name"
  inst="${install_dir//\{name\}/$name}"
  mkdir -p "$dir/tls"
  san=(--dns localhost)
  if is_ipv4 "$addr" || is_ipv6 "$addr"; then san+=(--ip "$addr"); else san+=(--dns "$addr"); fi
  run certs node client --ca "$out/ca" --out "$dir/tls" --name "$name" "${san[@]}"
  run certs node route --ca "$out/ca" --out "$dir/tls" --name "$name" "${san[@]}"
  cp "$out/ca/ca.pem" "$dir/tls/ca.pem"
  cp "$pass_file" "$dir/route.pass" && chmod 600 "$dir/route.pass"
  run id init --internal-id-file "$dir/internal-id.seed"
  cat > "$dir/cluster.env.tmp" <<EOF
# membershipd cluster.env for node $name — written by deploy-cluster.sh; read by membershipd-cluster.service
# and by the admin CLI on this node. Secrets are files (mode 0600), never values here.
NODE_NAME=$name
CLUSTER_NAME=$cluster_name
ROUTES=$routes
NATS_CLIENT_PORT=${nports[$i]}
NATS_ROUTE_PORT=${rports[$i]}
HTTP_PORT=${hports[$i]}
TLS_CERT=$inst/tls/client.pem
TLS_KEY=$inst/tls/client.key
ROUTE_TLS_CERT=$inst/tls/route.pem
ROUTE_TLS_KEY=$inst/tls/route.key
ROUTE_TLS_CA=$inst/tls/ca.pem
CLUSTER_USER=$cluster_user
CLUSTER_PASS_FILE=$inst/route.pass
INTERNAL_ID_FILE=$inst/internal-id.seed
KV_REPLICAS=$replicas
EOF
  if [ -n "${joining[$name]:-}" ]; then
    cat >> "$dir/cluster.env.tmp" <<EOF
# Joins a running cluster (register it first: membershipd cluster add $name $(route_url "$addr" "${rports[$i]}")).
# Read on the first start only; once data/cluster.json exists the node ignores it.
INITIAL_CLUSTER_STATE=existing
EOF
  fi
  chmod 600 "$dir/cluster.env.tmp" && mv "$dir/cluster.env.tmp" "$dir/cluster.env"
  echo "$name: $dir/cluster.env (client ${addr}:${nports[$i]}, route ${addr}:${rports[$i]}, http ${addr}:${hports[$i]})${joining[$name]:+; joins a running cluster: run \"membershipd cluster add $name $(route_url "$addr" "${rports[$i]}")\" on a member before starting it}"
done
echo "cluster \"$cluster_name\": $count nodes${joining[*]:+ (${#joining[@]} joining)}, kv-replicas $replicas; CA $out/ca/ca.pem; copy each $out/<name>/ to its node's $install_dir"
