#!/usr/bin/env bash
# netwall quickstart: a gateway, a connector and a sample service on this machine's loopback,
# with self-signed TLS and in-memory defaults. Prints the URL to try; Ctrl-C stops everything.
#
# Ports can be changed with HTTPS_PORT, HTTP_PORT, TUNNEL_PORT, ADMIN_PORT and SERVICE_PORT.
# With --smoke it checks one request through the tunnel and exits (used to test this script).
set -euo pipefail
cd "$(dirname "$0")/.."

HTTPS_PORT=${HTTPS_PORT:-8443}
HTTP_PORT=${HTTP_PORT:-8080}
TUNNEL_PORT=${TUNNEL_PORT:-4443}
ADMIN_PORT=${ADMIN_PORT:-9090}
SERVICE_PORT=${SERVICE_PORT:-3000}
SMOKE=${1:-}

echo "building netwall (first build takes a few minutes)..."
cargo build --locked --workspace --bins --quiet
bin=target/debug

work=$(mktemp -d -t netwall-demo.XXXXXX)
cleanup() {
  trap - EXIT INT TERM
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# A fresh tunnel credential: the connector gets the secret, the gateway only its SHA-256.
"$bin/netwall-gateway" credential > "$work/credential.txt"
credential=$(awk '/^credential /{print $3}' "$work/credential.txt")
credential_sha256=$(awk -F'"' '/credential_sha256/{print $2}' "$work/credential.txt")
printf '%s\n' "$credential" > "$work/credential"
chmod 600 "$work/credential"

cat > "$work/gateway.toml" <<TOML
gateway_id = "demo-gateway"

[https]
listen = "127.0.0.1:$HTTPS_PORT"
self_signed = true                 # development certificate for localhost

[http]
listen = "127.0.0.1:$HTTP_PORT"    # answers 308 to https

[tunnel_listener]
listen = "127.0.0.1:$TUNNEL_PORT"  # QUIC; the connector dials here
self_signed = true
self_signed_cert_out = "tunnel.pem"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"   # /metrics, /healthz

[[tunnel]]
name = "demo"
credential_sha256 = "$credential_sha256"

[[route]]
host = "localhost"
tunnel = "demo"
service = "web"
TOML

cat > "$work/connector.toml" <<TOML
connector_id = "demo-connector"
tunnel = "demo"
credential_file = "credential"
gateways = ["127.0.0.1:$TUNNEL_PORT"]
tls_port = $HTTPS_PORT                # QUIC first; TLS on the HTTPS port if UDP is blocked
server_name = "localhost"
pin_cert_file = "tunnel.pem"       # trust exactly the gateway's generated certificate

[services]
web = "http://127.0.0.1:$SERVICE_PORT"
TOML

"$bin/netwall-sample" --listen "127.0.0.1:$SERVICE_PORT" --name demo-service 2> "$work/service.log" &
service_pid=$!
"$bin/netwall-gateway" --config "$work/gateway.toml" 2> "$work/gateway.log" &
gateway_pid=$!

wait_for() { # what, seconds, command...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq $((seconds * 10))); do
    if "$@" 2>/dev/null; then return 0; fi
    # A component that exited (a port in use, say) will not come up: say so at once.
    for pid in $service_pid $gateway_pid ${connector_pid:-}; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "quickstart: a component exited while waiting for $what; logs in $work" >&2
        tail -n 5 "$work"/*.log >&2 || true
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "quickstart: $what did not happen within ${seconds}s; logs in $work" >&2
  tail -n 20 "$work"/*.log >&2 || true
  exit 1
}
wait_for "the gateway writing its tunnel certificate" 30 test -s "$work/tunnel.pem"
"$bin/netwall-connector" --config "$work/connector.toml" 2> "$work/connector.log" &
connector_pid=$!

tunnel_up() {
  exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT" || return 1
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  grep -q 'netwall_tunnel_connections{tunnel="demo"} 1' <&3
  local ok=$?
  exec 3<&-
  return $ok
}
wait_for "the connector's tunnel coming up" 30 tunnel_up

if [ "$SMOKE" = "--smoke" ]; then
  answer=$(curl -sk "https://localhost:$HTTPS_PORT/hello")
  echo "$answer"
  case "$answer" in
    "hello from demo-service via netwall: GET /hello"*) echo "quickstart smoke: ok"; exit 0 ;;
    *) echo "quickstart smoke: unexpected answer" >&2; exit 1 ;;
  esac
fi

cat <<MSG

netwall demo is up: gateway, connector and sample service on loopback.

  open     https://localhost:$HTTPS_PORT/   (self-signed certificate)
  try      curl -k https://localhost:$HTTPS_PORT/hello
           curl -k --data 'hello through the tunnel' https://localhost:$HTTPS_PORT/echo
           curl -i http://localhost:$HTTP_PORT/            # 308 to https
           curl http://127.0.0.1:$ADMIN_PORT/metrics        # Prometheus metrics
  logs     $work/{gateway,connector,service}.log

The service listens on 127.0.0.1:$SERVICE_PORT only; the public request reaches it through
the connector's outbound QUIC tunnel. Ctrl-C stops everything.
MSG
wait
