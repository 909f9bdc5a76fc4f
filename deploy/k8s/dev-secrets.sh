#!/usr/bin/env bash
# Creates the Secrets that the itsm and itsm-data charts read by name, with random passwords, for a
# development or test cluster. A Secret that exists already is left as it is, so running this again
# changes nothing (and never rotates a password under a running database).
#
#   deploy/k8s/dev-secrets.sh [namespace]        (default namespace: itsm)
#
# Elsewhere create the same Secrets from your secret store (External Secrets, Sealed Secrets, Vault, ...):
#   <name>-postgres-superuser   kubernetes.io/basic-auth   username=postgres, password
#   <name>-<service>-db         kubernetes.io/basic-auth   username=<service>_app, password   (each service)
#   <name>-<service>-amqp       kubernetes.io/basic-auth   username=<service>, password       (each service)
#   <name>-gateway-redis        kubernetes.io/basic-auth   username=default, password
#   <name>-auth-bootstrap       Opaque                     password (the first admin's; optional)
#   <name>-auth-kek             Opaque                     kek (auth's key-encryption key: 32 random bytes,
#                                                          URL-safe base64; keep it, the signing keys need it)
#   <name>-webhook-secret-key   Opaque                     key (the key of the webhook signing secrets: 32 random
#                                                          bytes, URL-safe base64; keep it as long as the database)
#   <name>-audit-anchor-key     Opaque                     key (the audit log's anchor key: 32 random bytes,
#                                                          URL-safe base64; keep it as long as the log)
# <name> is itsm, the charts' `name` value (the per-service names follow it; the others are values of
# their own: postgres.superuserSecret, gateway.redis.secret, secrets.*). Passwords go into connection URLs
# as they are: keep them URL-safe (these are hex). The services are those of deploy/services.toml.
set -euo pipefail

namespace="${1:-itsm}"
name=itsm
kubectl="${KUBECTL:-kubectl}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
services="$(python3 "$here/../service_table.py" names)"

# 24 random bytes as 48 hex digits.
password() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

# secret <name> <type> <key> <value> [<key> <value> ...]: the manifest goes through stdin, so no value
# appears on a command line.
secret() {
    local secret="$1" type="$2"
    shift 2
    if "$kubectl" --namespace "$namespace" get secret "$secret" >/dev/null 2>&1; then
        echo "secret/$secret exists: kept"
        return
    fi
    {
        printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' "$secret" "$namespace"
        printf 'type: %s\nstringData:\n' "$type"
        while [ "$#" -gt 0 ]; do
            printf '  %s: "%s"\n' "$1" "$2"
            shift 2
        done
    } | "$kubectl" --namespace "$namespace" create -f -
}

secret "$name-postgres-superuser" kubernetes.io/basic-auth username postgres password "$(password)"
for service in $services; do
    secret "$name-$service-db" kubernetes.io/basic-auth username "${service}_app" password "$(password)"
    secret "$name-$service-amqp" kubernetes.io/basic-auth username "$service" password "$(password)"
done
secret "$name-gateway-redis" kubernetes.io/basic-auth username default password "$(password)"
secret "$name-auth-bootstrap" Opaque password "$(password)"
secret "$name-auth-kek" Opaque kek "$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')"
secret "$name-webhook-secret-key" Opaque key "$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')"
secret "$name-audit-anchor-key" Opaque key "$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')"
echo "the first admin's password: kubectl -n $namespace get secret $name-auth-bootstrap -o jsonpath='{.data.password}' | base64 -d"
