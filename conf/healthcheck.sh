#!/bin/bash
# SuperChat health check (MONITORING.md, "Health Check Script"): exits 0 when scd accepts TCP
# connections and /health reports status and database "ok"; otherwise prints ERROR and exits 1.
#
# Environment:
#   HEALTHCHECK_HOST          server host (default localhost)
#   HEALTHCHECK_TCP_PORT      binary protocol port, tcp_port (default 6465)
#   HEALTHCHECK_METRICS_PORT  /health port, metrics_port (default 9090)
#   HEALTHCHECK_TIMEOUT       seconds per check (default 5)
# Needs nc, curl and jq.

set -euo pipefail

HOST=${HEALTHCHECK_HOST:-localhost}
TCP_PORT=${HEALTHCHECK_TCP_PORT:-6465}
METRICS_PORT=${HEALTHCHECK_METRICS_PORT:-9090}
TIMEOUT=${HEALTHCHECK_TIMEOUT:-5}

# Check if server is listening on TCP port
if ! nc -z -w "$TIMEOUT" "$HOST" "$TCP_PORT"; then
  echo "ERROR: Server not listening on port $TCP_PORT"
  exit 1
fi

# Check health endpoint. No --fail: an unhealthy server answers 503 with a body saying what is wrong.
RESPONSE=$(curl -s --max-time "$TIMEOUT" "http://$HOST:$METRICS_PORT/health" || echo "")
if [ -z "$RESPONSE" ]; then
  echo "ERROR: Health endpoint not responding"
  exit 1
fi

# Parse JSON response
if ! STATUS=$(jq -r '.status' <<<"$RESPONSE" 2>/dev/null) ||
   ! DB_STATUS=$(jq -r '.database' <<<"$RESPONSE" 2>/dev/null); then
  echo "ERROR: Health endpoint did not answer JSON: $RESPONSE"
  exit 1
fi

if [ "$STATUS" != "ok" ]; then
  echo "ERROR: Server status: $STATUS"
  exit 1
fi

if [ "$DB_STATUS" != "ok" ]; then
  echo "ERROR: Database status: $DB_STATUS"
  exit 1
fi

echo "OK: SuperChat server is healthy"
exit 0
